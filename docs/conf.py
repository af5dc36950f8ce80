import importlib.metadata

# Project --------------------------------------------------------------

project = "flask_uow"
copyright = "2026 flask_uow contributors"
release = importlib.metadata.version("flask-uow")
version = ".".join(release.split(".")[:2])

# General --------------------------------------------------------------

extensions = ["sphinx.ext.autodoc"]
exclude_patterns = ["_build"]
default_role = "code"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

# HTML -----------------------------------------------------------------

html_theme = "alabaster"
html_title = f"flask_uow {version}"
html_static_path: list[str] = []
