"""Everything that needs torch and peft: training, evaluation, merging and the worker."""
