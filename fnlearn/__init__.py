"""fnlearn: pure-function models, Optax optimizers and a compiled fit loop for JAX."""
