"""The LAB model: boundary heatmap estimator, boundary-aware regressor, discriminator, losses."""
from labfast.model import losses
from labfast.model.config import PRESETS, LABConfig, config_by_name
from labfast.model.lab import LAB, LABOutput, ModelSummary

__all__ = ["LAB", "LABOutput", "LABConfig", "ModelSummary", "PRESETS", "config_by_name", "losses"]
