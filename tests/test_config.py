"""The typed schema through Hydra's own compose API."""

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from dreamlab import app, backbones, config
from dreamlab.errors import DreamlabError


def composed(*overrides):
    with initialize_config_module(config_module="dreamlab.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_defaults_are_the_documented_ones(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = composed()
    conf = OmegaConf.to_object(cfg)
    assert isinstance(conf, config.Config)
    assert conf.backbone.name == "inception_v3" and conf.backbone.weights == "imagenet"
    assert conf.layers == "default" and conf.max_size == 512 and conf.octaves == 4
    assert conf.image.endswith("dreamlab/data/chelsea.png")
    assert conf.mlflow.tracking_uri == "sqlite:///outputs/mlflow.db"


def test_mlflow_tracking_uri_from_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert composed().mlflow.tracking_uri == "http://tracking.example:5000"


def test_every_backbone_is_a_config_group_option():
    for name in ["inception_v3", "vgg16", "vgg19", "resnet50", "mobilenet_v2"]:
        assert composed(f"backbone={name}").backbone.name == name
    assert set(backbones.BACKBONES) >= {"inception_v3", "vgg16", "vgg19", "resnet50", "mobilenet_v2"}


def test_layer_maps_with_weights_and_channels_on_the_command_line():
    cfg = composed("layers={mixed3:1,mixed5:-1.5,mixed4:{weight:2,channels:[1,7]}}")
    layers = OmegaConf.to_object(cfg).layers
    assert layers == {"mixed3": 1, "mixed5": -1.5, "mixed4": {"weight": 2, "channels": [1, 7]}}
    from dreamlab.objective import Term, parse_layers

    assert parse_layers(layers) == (Term("mixed3", 1.0), Term("mixed5", -1.5), Term("mixed4", 2.0, (1, 7)))
    assert parse_layers("keras", backbones.BACKBONES["inception_v3"].presets)[3] == Term("mixed7", 2.5)


def test_a_bad_value_is_rejected_when_the_schema_is_instantiated():
    with pytest.raises(DreamlabError, match="grad_norm must be one of std|mean_abs|l2"):
        OmegaConf.to_object(composed("grad_norm=max"))
