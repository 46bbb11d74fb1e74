"""The compiler: front end (treelite) -> intermediate form (``ir``) -> C (``codegen``) -> build -> verification (``driver``). Build side."""
