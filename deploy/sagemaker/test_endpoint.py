"""Offline tests for endpoint.py (against moto's SageMaker and Application Auto
Scaling) and stream_client.py's SSE re-assembly.

What moto 5.2 does not check, and so only a real account does: that SageMaker
accepts the field values (AMI on that instance type, volume size, timeouts), IAM,
the image starting and passing /ping, and that the scaling alarms ever fire.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Iterator

import boto3
import pytest
from moto import mock_aws

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import endpoint  # noqa: E402
import stream_client  # noqa: E402

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/inflight:neuron"
RID = "endpoint/inflight/variant/AllTraffic"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    # moto 5.2's instance-type allow-list stops at inf1 (no inf2/trn); widen it so
    # the default ml.inf2.xlarge reaches moto. Real validation is SageMaker's.
    from moto.sagemaker import models as sm_models

    real = sm_models.FakeEndpointConfig.validate_instance_type

    def allow_neuron(self: Any, instance_type: str) -> None:
        if not instance_type.startswith(endpoint.NEURON_PREFIXES):
            real(self, instance_type)

    monkeypatch.setattr(sm_models.FakeEndpointConfig, "validate_instance_type", allow_neuron)
    with mock_aws():
        yield boto3.client("sagemaker", region_name=REGION), boto3.client(
            "application-autoscaling", region_name=REGION
        )


def run(*argv: str) -> None:
    assert endpoint.main(["--region", REGION, *argv]) == 0


def deploy(*extra: str) -> None:
    run("deploy", "--image-uri", IMAGE, "--role-arn", ROLE, *extra)


def test_deploy_inf2_creates_model_config_endpoint(aws: tuple[Any, Any]) -> None:
    sm, _ = aws
    deploy("--model-data", "s3://bucket/inflight/model.tar.gz", "--env", "INFLIGHT_MAX_RUNNING=8", "--wait")

    model = sm.describe_model(ModelName="inflight-model")
    assert model["ExecutionRoleArn"] == ROLE
    container = model["PrimaryContainer"]
    assert container["Image"] == IMAGE
    assert container["ModelDataUrl"] == "s3://bucket/inflight/model.tar.gz"
    assert container["Environment"] == {
        "INFLIGHT_HOST": "0.0.0.0",
        "INFLIGHT_SHUTDOWN_TIMEOUT": "25",
        "INFLIGHT_BACKEND": "neuron",
        "INFLIGHT_MAX_RUNNING": "8",
    }

    config = sm.describe_endpoint_config(EndpointConfigName="inflight-config")
    [variant] = config["ProductionVariants"]
    assert variant["VariantName"] == "AllTraffic"
    assert variant["ModelName"] == "inflight-model"
    assert variant["InstanceType"] == "ml.inf2.xlarge"
    assert variant["InitialInstanceCount"] == 1
    assert variant["VolumeSizeInGB"] == 64
    assert variant["ModelDataDownloadTimeoutInSeconds"] == 1200
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 1200
    assert variant["InferenceAmiVersion"] == "al2-ami-sagemaker-inference-neuron-2"

    ep = sm.describe_endpoint(EndpointName="inflight")
    assert ep["EndpointConfigName"] == "inflight-config"
    assert ep["EndpointStatus"] == "InService"


def test_ami_value_is_in_botocores_enum() -> None:
    # moto does not check enums; botocore's service model is AWS's own list.
    shapes = boto3.client("sagemaker", region_name=REGION).meta.service_model
    assert endpoint.NEURON_AMI in shapes.shape_for("ProductionVariantInferenceAmiVersion").enum


def test_cpu_instance_gets_no_neuron_settings_and_baked_image_no_model_data(aws: tuple[Any, Any]) -> None:
    sm, _ = aws
    deploy("--instance-type", "ml.c5.xlarge", "--instance-count", "2", "--no-autoscaling")
    container = sm.describe_model(ModelName="inflight-model")["PrimaryContainer"]
    assert "ModelDataUrl" not in container and "ModelDataSource" not in container
    assert "INFLIGHT_BACKEND" not in container["Environment"]
    [variant] = sm.describe_endpoint_config(EndpointConfigName="inflight-config")["ProductionVariants"]
    assert variant["InstanceType"] == "ml.c5.xlarge"
    assert variant["InitialInstanceCount"] == 2
    for key in ("VolumeSizeInGB", "InferenceAmiVersion", "ContainerStartupHealthCheckTimeoutInSeconds"):
        assert key not in variant


def test_s3_prefix_is_uncompressed_model_data_source() -> None:
    container = endpoint.model_container(IMAGE, "s3://bucket/neuron-artifacts/", {})
    assert container["ModelDataSource"] == {
        "S3DataSource": {
            "S3Uri": "s3://bucket/neuron-artifacts/",
            "S3DataType": "S3Prefix",
            "CompressionType": "None",
        }
    }
    assert "ModelDataUrl" not in container


def test_default_scaling_is_invocations_per_instance(aws: tuple[Any, Any]) -> None:
    _, aas = aws
    deploy("--min-instances", "1", "--max-instances", "3", "--target", "40")

    [target] = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert target["ResourceId"] == RID
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 3)

    [policy] = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=RID)["ScalingPolicies"]
    assert policy["PolicyName"] == "inflight-scaling"
    assert policy["PolicyType"] == "TargetTrackingScaling"
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    assert config == {
        "TargetValue": 40.0,
        "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
        "ScaleOutCooldown": 60,
        "ScaleInCooldown": 600,
    }


def test_queue_scaling_uses_customized_metric(aws: tuple[Any, Any]) -> None:
    _, aas = aws
    deploy("--scale-on", "queue", "--target", "4", "--scale-in-cooldown", "900")
    [policy] = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=RID)["ScalingPolicies"]
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == 4.0
    assert config["ScaleInCooldown"] == 900
    assert "PredefinedMetricSpecification" not in config
    assert config["CustomizedMetricSpecification"] == {
        "MetricName": "inflight_requests_waiting",
        "Namespace": "Inflight",
        "Dimensions": [
            {"Name": "EndpointName", "Value": "inflight"},
            {"Name": "VariantName", "Value": "AllTraffic"},
        ],
        "Statistic": "Average",
    }


def test_concurrency_scaling_metric_is_in_botocores_enum(aws: tuple[Any, Any]) -> None:
    _, aas = aws
    deploy("--scale-on", "concurrency", "--target", "16")
    [policy] = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=RID)["ScalingPolicies"]
    metric = policy["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"]
    assert metric["PredefinedMetricType"] in aas.meta.service_model.shape_for("MetricType").enum


def test_bad_capacity_bounds_are_refused(aws: tuple[Any, Any]) -> None:
    with pytest.raises(SystemExit):
        deploy("--min-instances", "3", "--max-instances", "2")


def test_delete_removes_everything_and_is_idempotent(aws: tuple[Any, Any], capsys: pytest.CaptureFixture[str]) -> None:
    sm, aas = aws
    deploy()
    run("delete")
    assert "already gone" not in capsys.readouterr().out

    assert aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"] == []
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert sm.list_endpoints()["Endpoints"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == []

    run("delete")
    out = capsys.readouterr().out
    assert out.count("already gone") == 5, out


def test_delete_after_partial_teardown(aws: tuple[Any, Any]) -> None:
    sm, _ = aws
    deploy()
    sm.delete_endpoint(EndpointName="inflight")
    run("delete")
    assert sm.list_models()["Models"] == []


def test_describe_prints_status_and_policy(aws: tuple[Any, Any], capsys: pytest.CaptureFixture[str]) -> None:
    deploy()
    capsys.readouterr()
    run("describe")
    out = json.loads(capsys.readouterr().out)
    assert out["EndpointStatus"] == "InService"
    assert out["ScalingPolicies"][0]["PolicyName"] == "inflight-scaling"


# --- stream_client: SSE re-assembly over arbitrary byte boundaries ---

def chat_chunk(text: str) -> bytes:
    body = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


STREAM = (
    b": keep-alive\n\n"
    + chat_chunk("Héllo")
    + chat_chunk(", wörld 🦀")
    + chat_chunk("")
    + b"data: [DONE]\n\n"
)


def split_every(data: bytes, n: int) -> list[bytes]:
    return [data[i:i + n] for i in range(0, len(data), n)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 64, len(STREAM)])
def test_tokens_survive_any_split(n: int) -> None:
    assert "".join(stream_client.tokens(split_every(STREAM, n))) == "Héllo, wörld 🦀"


def test_crlf_and_multiline_data() -> None:
    raw = b"data: a\r\ndata: b\r\n\r\ndata: c\r\r\n"
    for n in (1, 2, len(raw)):
        assert list(stream_client.sse_data(split_every(raw, n))) == ["a\nb", "c"]


def test_completions_text_and_stop_at_done() -> None:
    raw = b'data: {"choices":[{"text":"x"}]}\n\ndata: [DONE]\n\ndata: {"choices":[{"text":"never"}]}\n\n'
    assert list(stream_client.tokens([raw])) == ["x"]


def test_incomplete_event_is_not_emitted() -> None:
    decoder = stream_client.SseDecoder()
    assert decoder.feed(b'data: {"choices"') == []
    assert decoder.feed(b":[]}\n") == []
    assert decoder.feed(b"\n") == ['{"choices":[]}']


def test_error_event_raises() -> None:
    raw = b'data: {"error":{"message":"boom"}}\n\n'
    with pytest.raises(RuntimeError, match="boom"):
        list(stream_client.tokens([raw]))


def test_payload_parts_reads_event_stream_shape() -> None:
    response = {"Body": [{"PayloadPart": {"Bytes": b"ab"}}, {"PayloadPart": {"Bytes": b"c"}}]}
    assert list(stream_client.payload_parts(response)) == [b"ab", b"c"]
