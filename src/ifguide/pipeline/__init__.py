"""The whole IF-Guide pipeline: ``run_pipeline(config)`` and the built-in demo."""

from ifguide.pipeline.config import PipelineConfig, config_from_dict, load_config

__all__ = ["PipelineConfig", "config_from_dict", "load_config", "run_pipeline", "run_demo"]


def __getattr__(name):
    if name == "run_pipeline":
        from ifguide.pipeline.run import run_pipeline

        return run_pipeline
    if name == "run_demo":
        from ifguide.pipeline.demo import run_demo

        return run_demo
    raise AttributeError(name)
