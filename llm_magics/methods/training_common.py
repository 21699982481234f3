"""Moved: the training methods' shared pieces are public in `llm_magics.training`.

Kept as a re-export for code not yet moved over; import from `llm_magics.training`.
"""
from ..training import (TaskOptions, TrainedResult, check_resumable, close_run, describe_run,  # noqa: F401
                        find_checkpoint, plot_history, prepare_data, save_run_options, train_config)
