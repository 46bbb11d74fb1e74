"""The typed artifact metadata (reco_fast.metadata.ArtifactMetadata): one definition of
metadata.json, read back to exactly its own JSON, and a missing or ill-typed field refused
by name, whether the file is read by load, info or the compiler's writer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reco_fast
from reco_fast import ArtifactError
from reco_fast.artifact import METADATA_FILE, metadata_digest, read_artifact, write_metadata
from reco_fast.metadata import ArtifactMetadata
from tests.helpers import Built, write_meta


def _meta(root: Path) -> dict[str, Any]:
    return json.loads((root / METADATA_FILE).read_text())


def test_every_field_has_a_json_type_and_a_doc() -> None:
    names = [f.name for f in dataclasses.fields(ArtifactMetadata)]
    keys = [n for n in names if n not in ("absent_keys", "extra")]
    assert list(ArtifactMetadata._TYPES) == keys
    doc = ArtifactMetadata.__doc__ or ""
    for name in names:
        assert f"\n    {name} : " in doc, name


def test_a_built_artifact_reads_back_to_its_own_json(built: Built) -> None:
    on_disk = _meta(built.path)
    meta = ArtifactMetadata.from_json(on_disk)
    assert meta.to_json() == on_disk
    assert list(meta.to_json()) == list(on_disk)  # same keys, same order
    assert metadata_digest(meta) == on_disk["metadata_sha256"]
    # the typed fields are the file's values
    assert meta.feature_names == tuple(on_disk["feature_names"])
    assert meta.n_trees == on_disk["n_trees"] and meta.catalog == on_disk["catalog"]
    loaded = reco_fast.load(built.path).metadata
    assert isinstance(loaded, ArtifactMetadata)
    assert loaded == meta and dict(loaded) == on_disk and loaded["n_trees"] == meta.n_trees


def test_a_format_2_file_keeps_its_keys(built: Built) -> None:
    old = _meta(built.path)
    v3_only = ("family", "objective", "output", "link", "input_precision", "missing_values")
    for key in (*v3_only, "flat_evaluator"):
        del old[key]
    old["format_version"] = 2
    meta = ArtifactMetadata.from_json(old)
    assert meta.output == "probability" and meta.missing_values == "refused"
    assert meta.to_json() == old  # the defaults are not written into it


def test_unknown_keys_are_kept(built: Built) -> None:
    data = {**_meta(built.path), "shop": {"name": "x"}}
    meta = ArtifactMetadata.from_json(data)
    assert meta.extra == {"shop": {"name": "x"}} and meta.to_json() == data


def test_to_json_is_a_copy(built: Built) -> None:
    meta = ArtifactMetadata.from_json(_meta(built.path))
    meta.to_json()["estimator"]["max_depth"] = 99
    assert meta.to_json()["estimator"]["max_depth"] == meta.estimator["max_depth"] != 99


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_trees", "100", r"'n_trees' must be an integer, got a string"),
        ("n_trees", True, r"'n_trees' must be an integer, got a boolean"),
        ("threshold", "0.7", r"'threshold' must be a number or null, got a string"),
        ("feature_names", ["a", 1], r"'feature_names' must be an array of strings"),
        ("platform", None, r"'platform' must be an object of strings, got null"),
        ("files", [], r"'files' must be an object of strings, got an array"),
        ("catalog", 3, r"'catalog' must be a string or null, got a number"),
        ("output", "logit", r"'output' must be one of \['probability', 'score', 'value'\]"),
        ("golden", [1, 2], r"'golden' must be an object, got an array"),
    ],
)
def test_an_ill_typed_field_is_named(copy: Path, field: str, value: Any, message: str) -> None:
    meta = _meta(copy)
    meta[field] = value
    with pytest.raises(ArtifactError, match=message):
        ArtifactMetadata.from_json(meta)
    write_meta(copy, meta, reseal=True)
    with pytest.raises(ArtifactError, match=r"metadata.json: the field " + message):
        reco_fast.load(copy)


@pytest.mark.parametrize("field", ["n_trees", "module", "golden", "platform", "files"])
def test_a_missing_field_is_named(copy: Path, field: str) -> None:
    meta = _meta(copy)
    del meta[field]
    write_meta(copy, meta, reseal=True)
    with pytest.raises(ArtifactError, match=rf"metadata.json has no '{field}' field.*rebuild"):
        read_artifact(copy)


def test_info_reports_a_bad_field_by_name(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reco_fast.tools.cli import main

    meta = _meta(copy)
    meta["backends"] = "fast"
    write_meta(copy, meta, reseal=True)
    assert main(["info", str(copy)]) != 0
    assert "the field 'backends' must be an object, got a string" in capsys.readouterr().err


def test_the_writer_checks_the_fields_and_returns_what_it_wrote(copy: Path) -> None:
    meta = _meta(copy)
    del meta["files"], meta["metadata_sha256"]
    (copy / METADATA_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"'vocabulary' must be an object or null"):
        write_metadata(copy, {**meta, "vocabulary": ["x"]})
    assert not (copy / METADATA_FILE).exists()
    written = write_metadata(copy, meta)
    assert written.to_json() == _meta(copy) and written.files and written.metadata_sha256
    assert read_artifact(copy).metadata == written


def test_the_mapping_view_is_a_fresh_copy_of_every_value(built: Built) -> None:
    # meta["x"] is the JSON form of one key: editing it never edits the object, and a
    # scalar is a JSON scalar (a numpy float given to replace() reads back as a float)
    meta = ArtifactMetadata.from_json(_meta(built.path))
    meta["golden"]["X"].clear()
    meta["feature_names"].append("x")
    assert meta["golden"]["X"] and meta["feature_names"] == list(meta.feature_names)
    edited = meta.replace(threshold=np.float64(0.25))
    assert type(edited["threshold"]) is float and type(edited.to_json()["threshold"]) is float
    # two objects holding NaN are equal, as their JSON forms are
    nan = [meta.replace(threshold=float("nan")) for _ in range(2)]
    assert nan[0] == nan[1]


@pytest.mark.parametrize(
    "extra",
    [{"format": "other"}, {"threshold": 7}, {1: "one"}, {"1": "a", 1: "b"}, {None: 0, True: 1}],
    ids=["format", "a field", "int key", "colliding keys", "null and true"],
)
def test_extra_keys_read_as_their_json_form(built: Built, extra: dict[Any, Any]) -> None:
    # the mapping view is the JSON object: len, iteration and items agree with it
    meta = ArtifactMetadata.from_json(_meta(built.path)).replace(extra=extra)
    expected = json.loads(json.dumps({**meta.replace(extra={}).to_json(), **extra}))
    assert dict(meta) == meta.to_json() == expected
    assert list(meta) == list(expected) and len(meta) == len(expected)
    assert all(key in meta for key in expected) and 1 not in meta


def test_the_writer_writes_extra_keys_as_json_does(copy: Path) -> None:
    meta = _meta(copy)
    del meta["files"], meta["metadata_sha256"]
    (copy / METADATA_FILE).unlink()
    written = write_metadata(copy, {**meta, 7: "seven", "clé ☃": ["ü"]})
    on_disk = _meta(copy)
    assert on_disk["7"] == "seven" and on_disk["clé ☃"] == ["ü"]
    assert written.to_json() == on_disk and (copy / METADATA_FILE).read_bytes().isascii()
    assert read_artifact(copy).metadata == written


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)
_KEYS = (
    st.text(max_size=4)
    | st.integers()
    | st.none()
    | st.booleans()
    | st.sampled_from(["format", "threshold", "golden", "files", "metadata_sha256"])
)


@settings(max_examples=200, deadline=None)
@given(
    extra=st.dictionaries(_KEYS, _JSON, max_size=4),
    absent=st.sets(st.sampled_from(["data", "catalog", "vocabulary"])),
)
def test_the_mapping_view_is_the_json_of_fields_updated_with_extra(
    built: Built, extra: dict[Any, Any], absent: set[str]
) -> None:
    # the definition written out: {"format", each present field} updated with extra, as
    # JSON reads it back; the view (items, order, len, in) and to_json are exactly that
    base = ArtifactMetadata.from_json(_meta(built.path))
    meta = dataclasses.replace(base, absent_keys=frozenset(absent), extra=extra)
    fields = {"format": "reco_fast"}
    fields.update({k: getattr(meta, k) for k in ArtifactMetadata._TYPES if k not in absent})
    expected = json.loads(json.dumps({**fields, **extra}))
    assert meta.to_json() == expected and dict(meta) == expected
    assert list(meta) == list(expected) and len(meta) == len(expected)
    assert all(k in meta for k in expected) and not any(k in meta for k in absent - extra.keys())
