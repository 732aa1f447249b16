"""torchtune recipes of composer-core: `tune run composer_torchtune/recipes/composer_grpo.py --config <yaml>`;
shipped configs in `configs/`."""
