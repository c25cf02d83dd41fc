"""Imports every table module so the metadata is complete (Alembic, tests, `create_all`)."""

from accounts import models as accounts_models
from campaigns import models as campaigns_models
from campaigns import report_models

__all__ = ["accounts_models", "campaigns_models", "report_models"]
