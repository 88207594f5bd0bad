"""flowvae: VAEs with normalizing-flow posteriors, and honest log-likelihood estimators."""

__version__ = "0.1.0"
