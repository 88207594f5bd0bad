"""flowvae: variational autoencoders with normalizing-flow posteriors, and honest log-likelihoods.

The public API (everything the CLI does goes through these):

- models: :class:`VAE` (assembled from an encoder, a posterior head, a decoder and a likelihood),
  :func:`build_model` (from a :class:`ModelConfig`), :mod:`flowvae.posteriors` (``IAF``,
  ``Planar``, ``SylvesterOrthogonal``, ``RealNVP``, ``RealNVPAux``, ... on your own features);
- objectives and estimators: :func:`elbo`, :func:`iwae`, :func:`evaluate` (any registered
  estimator over a dataset, with standard errors and diagnostics), :data:`ESTIMATORS`;
- runs and data: :func:`fit` (trains a run, as ``flowvae train``; ``seeds=N``: a group of N runs,
  :mod:`flowvae.groups`; :mod:`flowvae.group_training`), :func:`sweep` (a table's rows × seeds from
  a spec, on this machine or a Slurm cluster, :mod:`flowvae.sweeps`), :func:`load_run`,
  :func:`load_data`, :func:`preset`, :class:`Config`;
- after training (:mod:`flowvae.latents`): :func:`encode`, :func:`decode`, :func:`sample`,
  :func:`interpolate`, :func:`traverse`, :func:`reconstruct` (``keep_layers``: what each
  stochastic layer holds);
- the contract every model and posterior satisfies: :class:`Posterior`, :class:`ElboTerms`,
  :class:`LatentVariableModel` (:mod:`flowvae.core`).
"""

from . import posteriors
from .checkpoint import Run, load_run
from .config import Config, DataConfig, EvalConfig, ModelConfig, TrainConfig
from .core import ElboTerms, LatentVariableModel, Posterior
from .data import ImageData, load_data
from .estimators import ESTIMATORS, Estimate, elbo, evaluate, iwae
from .group_training import fit
from .latents import Decoded, Latents, decode, encode, interpolate, reconstruct, sample, traverse
from .model import build_model
from .presets import preset
from .sweeps import sweep
from .vae import VAE

__version__ = "0.1.0"

__all__ = [
    "ESTIMATORS", "VAE", "Config", "DataConfig", "ElboTerms", "Estimate", "EvalConfig", "ImageData",
    "LatentVariableModel", "ModelConfig", "Posterior", "Run", "TrainConfig", "__version__", "build_model",
    "elbo", "evaluate", "iwae", "load_data", "load_run", "posteriors", "preset", "fit", "sweep",
    "Decoded", "Latents", "decode", "encode", "interpolate", "reconstruct", "sample", "traverse",
]  # fmt: skip
