"""The default config every project config starts from; it lives in the library (jaxkd/config/default.py) so
that the config checks read it without importing configs."""

from jaxkd.config.default import get_config, repdistiller_recipe

__all__ = ["get_config", "repdistiller_recipe"]
