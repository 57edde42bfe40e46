"""The project's Optuna sweeper, hydra/sweeper=optuna_study (optuna_sweeper.py)."""
