"""Container image tests (make test-image); a package so that its conftest is not the suite's ``conftest``."""
