"""composer-core inside VeRL (0.9.x), through VeRL's own extension points and without patching it.

- `plugin`: the `verl.plugins` entry point; `import verl` in the driver and in every Ray worker registers
  each composer objective as a policy-loss mode `composer_<name>` and each advantage estimator as
  `composer_<name>`, and registers the `composer` V1 trainer.
- `trainer`: the full composer loss (self-distillation with teacher contexts) as a V1 trainer.
- `overrides`: a ComposerConfig printed as the hydra overrides of an existing VeRL job.
"""
