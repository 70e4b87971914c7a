"""Model architectures of transformers-parrot (one subpackage per model, transformers' layout)."""
