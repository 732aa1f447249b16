"""TRL adapter: composer-core's loss inside TRL's GRPOTrainer, and the embedded default job."""
