"""Instruction-tuning data and training: installed as `icv_deploy.training`."""
