from __future__ import annotations

import pytest

from streamzip.errors import ConfigError
from streamzip.pipeline import Pipeline, load_pipeline
from streamzip.pipelines import builtin_names

YAML = """
name: demo
decode: {fps: 1, width: 64, height: 64}
steps:
  - {id: enc, op: patch_encoder, patch_size: 8}
"""


def test_yaml_and_dsl_map_one_to_one() -> None:
    from_yaml = Pipeline.from_yaml(YAML)
    from_dsl = Pipeline("demo", decode={"fps": 1, "width": 64, "height": 64}).add("patch_encoder", id="enc", patch_size=8)
    assert from_yaml.to_dict() == from_dsl.to_dict()
    assert Pipeline.from_yaml(from_dsl.to_yaml()).to_dict() == from_dsl.to_dict()


def test_every_problem_listed_with_its_path() -> None:
    text = """
name: bad
decode: {fps: -1}
steps:
  - {op: patch_encoder, patch_size: "big"}
  - {op: framefuzion}
  - {id: x, op: patch_encoder, colour: red}
  - {id: x, op: patch_encoder}
"""
    pipe = Pipeline.from_yaml(text)
    with pytest.raises(ConfigError) as info:
        pipe.validate()
    paths = [p.path for p in info.value.problems]
    assert "decode.fps" in paths
    assert "steps[0].patch_size" in paths
    assert "steps[1].op" in paths
    assert "steps[2].colour" in paths
    assert "steps[3].id" in paths
    assert "unknown step 'framefuzion'" in str(info.value)


def test_wrong_yaml_types_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="steps: expected a non-empty list"):
        Pipeline.from_yaml("name: x\nsteps: 3\n")
    with pytest.raises(ConfigError, match="line 3"):
        Pipeline.from_yaml("name: x\nsteps: [\n")
    with pytest.raises(ConfigError, match="a pipeline is a mapping"):
        Pipeline.from_yaml("- 1\n- 2\n")


def test_yaml_loading_is_safe() -> None:
    with pytest.raises(ConfigError):
        Pipeline.from_yaml("!!python/object/apply:os.system ['echo pwned']\n")


def test_a_token_step_needs_an_encoder_before_it() -> None:
    from streamzip.operator import Operator
    from streamzip.registry import register

    @register("_test_video_only")
    class VideoOnly(Operator):
        modalities = ("video",)

        def process(self, packet):  # type: ignore[no-untyped-def]
            return [packet]

    with pytest.raises(ConfigError, match=r"steps\[0\]: _test_video_only takes video tokens but no earlier step"):
        Pipeline().add("_test_video_only").add("patch_encoder").validate()
    Pipeline().add("patch_encoder").add("_test_video_only").validate()


def test_step_ids_are_unique_by_default() -> None:
    pipe = Pipeline().add("patch_encoder").add("patch_encoder")
    assert [s.id for s in pipe.steps] == ["patch_encoder", "patch_encoder_2"]


def test_graph_shows_each_step() -> None:
    text = Pipeline.from_yaml(YAML).graph()
    assert "[decode] fps=1" in text and "[enc] patch_encoder" in text


def test_builtin_pipelines_are_valid() -> None:
    names = builtin_names()
    assert "default" in names
    for name in names:
        load_pipeline(name).validate()


def test_unknown_pipeline_name_lists_builtins() -> None:
    with pytest.raises(ConfigError, match="built-in: .*default"):
        load_pipeline("no-such-pipeline")


def test_resources_are_declared_and_overridable() -> None:
    pipe = Pipeline().add("patch_encoder", id="enc", resources={"num_cpus": 1.5})
    assert pipe.resources() == {"enc": {"num_cpus": 1.5}}
    assert Pipeline.from_yaml(pipe.to_yaml()).resources() == {"enc": {"num_cpus": 1.5}}
    assert Pipeline().add("patch_encoder", id="enc").resources() == {"enc": {"num_cpus": 0.5}}
    with pytest.raises(ConfigError) as info:
        Pipeline().add("patch_encoder", resources={"num_cpus": -1, "tpus": 1}).validate()
    assert {p.path for p in info.value.problems} == {"steps[0].resources.num_cpus", "steps[0].resources.tpus"}
