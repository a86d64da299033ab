"""chronofeat: classifiers."""
