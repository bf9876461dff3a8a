"""Training data on disk: real video folders for SFT (`data.videos`) and preference pairs for DPO (`data.pairs`)."""
