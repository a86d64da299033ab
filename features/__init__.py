"""chronofeat: features."""
