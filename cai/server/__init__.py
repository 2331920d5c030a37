"""`cai serve`: the OpenAI-compatible constitutional proxy, judge and reward endpoints."""

from cai.server.app import create_app
from cai.server.config import ConfigError, ServeConfig, load_config

__all__ = ["ConfigError", "ServeConfig", "create_app", "load_config"]
