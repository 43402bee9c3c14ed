"""The pipeline's settings: one model for every command (medmeta/settings.py), re-exported here
for the training code's imports."""

from medmeta.settings import (ALGORITHMS, DEFAULT_FILE, NPROC_ENV, PipelineSettings, Settings, checked,
                              load_settings, settings_from_dict)

__all__ = ["ALGORITHMS", "DEFAULT_FILE", "NPROC_ENV", "PipelineSettings", "Settings", "checked", "load_settings",
           "settings_from_dict"]
