"""The config: the model (frozen dataclasses), its loading from YAML (``${VAR}``, ``*_file`` secrets), every check."""
