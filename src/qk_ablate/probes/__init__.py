"""Measurements of a loaded model: massive-value statistics and profiles, their pictures, the
fingerprint of a checkpoint, and the depth study with its tuned lens."""
