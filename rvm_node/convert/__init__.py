"""The local converter: ``convert_video`` and ``rvm-node convert``."""

from rvm_node.convert.api import convert_video
from rvm_node.convert.pipeline import RESUME_WARMUP, ConvertJob, ConvertReport, run_job
from rvm_node.convert.shot import ShotSpec

__all__ = ["RESUME_WARMUP", "ConvertJob", "ConvertReport", "ShotSpec", "convert_video", "run_job"]
