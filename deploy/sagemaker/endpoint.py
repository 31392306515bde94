#!/usr/bin/env python3
"""Deploy inflight to a SageMaker real-time endpoint, with instance auto scaling.

    python deploy/sagemaker/endpoint.py deploy --image-uri ACCOUNT.dkr.ecr.REGION.amazonaws.com/inflight:neuron \
        --role-arn arn:aws:iam::ACCOUNT:role/SageMakerExecution --model-data s3://bucket/inflight/model.tar.gz
    python deploy/sagemaker/endpoint.py describe
    python deploy/sagemaker/endpoint.py delete

Names derive from --name (default `inflight`): endpoint NAME, endpoint config
NAME-config, model NAME-model, scaling policy NAME-scaling. Endpoint configs are
immutable, so a second `deploy` with the same name fails: `delete` first, or pick
another --name.

References (looked up, not verified against a live account):
- ProductionVariant fields and InferenceAmiVersion values: botocore's SageMaker
  service model (botocore 1.44.x, shape ProductionVariantInferenceAmiVersion) and
  https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_ProductionVariant.html
- VolumeSizeInGB / ModelDataDownloadTimeoutInSeconds / ContainerStartupHealthCheckTimeoutInSeconds:
  https://docs.aws.amazon.com/sagemaker/latest/dg/large-model-inference-hosting.html
- Scaling: https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-auto-scaling-add-policy.html
  and https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-auto-scaling-add-code-define.html
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Sequence

import boto3
from botocore.exceptions import ClientError

SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
NEURON_PREFIXES = ("ml.inf2.", "ml.trn1.", "ml.trn1n.", "ml.trn2.")
# The only Neuron AMI in botocore 1.44's enum: "Accelerator: Inferentia2 and
# Trainium, Neuron driver version: 2.19". Verify it matches the Neuron SDK the
# image's libnrt was built against (NEURON.md records SDK 2.28 headers).
NEURON_AMI = "al2-ami-sagemaker-inference-neuron-2"
# Where --scale-on queue expects the queue depth. Nothing publishes it today: see
# queue_metric_spec().
QUEUE_METRIC_NAMESPACE = "Inflight"
QUEUE_METRIC_NAME = "inflight_requests_waiting"


def names(name: str) -> dict[str, str]:
    return {
        "endpoint": name,
        "config": f"{name}-config",
        "model": f"{name}-model",
        "policy": f"{name}-scaling",
    }


def resource_id(endpoint: str, variant: str) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def is_neuron(instance_type: str) -> bool:
    return instance_type.startswith(NEURON_PREFIXES)


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def container_env(instance_type: str, extra: dict[str, str]) -> dict[str, str]:
    env = {
        # `serve` binds 127.0.0.1 unless told otherwise; SageMaker's proxy reaches
        # the container over its network interface.
        "INFLIGHT_HOST": "0.0.0.0",
        # SageMaker sends SIGKILL 30 s after SIGTERM (NEURON.md, container contract):
        # the drain must end before that, and the default is 30 s.
        "INFLIGHT_SHUTDOWN_TIMEOUT": "25",
    }
    if is_neuron(instance_type):
        env["INFLIGHT_BACKEND"] = "neuron"
    elif instance_type.startswith(("ml.g", "ml.p")):
        env["INFLIGHT_BACKEND"] = "cuda"
    env.update(extra)
    return env


def model_container(image_uri: str, model_data: str | None, env: dict[str, str]) -> dict[str, Any]:
    container: dict[str, Any] = {"Image": image_uri, "Environment": env}
    if model_data is None:
        # Baked image: `--model` (or INFLIGHT_MODEL) names what is inside it.
        return container
    if model_data.endswith("/"):
        # An S3 prefix is copied as-is to /opt/ml/model: no tarball to pack or
        # unpack, which matters for multi-GiB compiled Neuron artifacts.
        container["ModelDataSource"] = {
            "S3DataSource": {"S3Uri": model_data, "S3DataType": "S3Prefix", "CompressionType": "None"}
        }
    else:
        container["ModelDataUrl"] = model_data
    return container


def production_variant(args: argparse.Namespace, model_name: str) -> dict[str, Any]:
    variant: dict[str, Any] = {
        "VariantName": args.variant,
        "ModelName": model_name,
        "InstanceType": args.instance_type,
        "InitialInstanceCount": args.instance_count,
        "InitialVariantWeight": 1.0,
    }
    if args.startup_timeout is not None:
        variant["ContainerStartupHealthCheckTimeoutInSeconds"] = args.startup_timeout
    if args.download_timeout is not None:
        variant["ModelDataDownloadTimeoutInSeconds"] = args.download_timeout
    if is_neuron(args.instance_type):
        # Loading NEFFs onto the NeuronCores and warming every bucket takes minutes,
        # not the default health-check window; inf2 has no instance store, so the
        # EBS volume holds /opt/ml/model (verify: AWS's instance-store table).
        variant.setdefault("ContainerStartupHealthCheckTimeoutInSeconds", 1200)
        variant.setdefault("ModelDataDownloadTimeoutInSeconds", 1200)
        variant["VolumeSizeInGB"] = args.volume_size
        variant["InferenceAmiVersion"] = args.ami_version or NEURON_AMI
    elif args.ami_version:
        variant["InferenceAmiVersion"] = args.ami_version
    return variant


def predefined_metric_spec(metric_type: str) -> dict[str, Any]:
    return {"PredefinedMetricSpecification": {"PredefinedMetricType": metric_type}}


def queue_metric_spec(endpoint: str, variant: str, namespace: str) -> dict[str, Any]:
    # SageMaker does not scrape the container's /metrics, and inflight does not call
    # PutMetricData: this metric exists only if something you run publishes it
    # (e.g. a process in the image that reads /metrics and calls
    # cloudwatch:PutMetricData with these dimensions, allowed by the execution
    # role). Until then the policy's alarms stay INSUFFICIENT_DATA and never scale,
    # which is why invocations per instance is the default.
    return {
        "CustomizedMetricSpecification": {
            "MetricName": QUEUE_METRIC_NAME,
            "Namespace": namespace,
            "Dimensions": [
                {"Name": "EndpointName", "Value": endpoint},
                {"Name": "VariantName", "Value": variant},
            ],
            "Statistic": "Average",
        }
    }


def policy_config(args: argparse.Namespace, endpoint: str) -> dict[str, Any]:
    if args.scale_on == "queue":
        spec = queue_metric_spec(endpoint, args.variant, args.metric_namespace)
    elif args.scale_on == "concurrency":
        # Concurrent requests per model container, published every 10 s and counted
        # until a stream's last token (endpoint-auto-scaling-add-code-define.html).
        spec = predefined_metric_spec("SageMakerVariantConcurrentRequestsPerModelHighResolution")
    else:
        # Invocations per instance per minute; a long streamed generation counts once.
        spec = predefined_metric_spec("SageMakerVariantInvocationsPerInstance")
    return {
        "TargetValue": args.target,
        **spec,
        # Scale out fast (a new inf2 instance takes minutes to pass /ping), scale in
        # slowly so a lull between bursts does not drop warm capacity.
        "ScaleOutCooldown": args.scale_out_cooldown,
        "ScaleInCooldown": args.scale_in_cooldown,
    }


def create_model(sm: Any, args: argparse.Namespace, n: dict[str, str]) -> None:
    env = container_env(args.instance_type, parse_env(args.env))
    sm.create_model(
        ModelName=n["model"],
        ExecutionRoleArn=args.role_arn,
        PrimaryContainer=model_container(args.image_uri, args.model_data, env),
    )


def create_endpoint(sm: Any, args: argparse.Namespace, n: dict[str, str]) -> None:
    sm.create_endpoint_config(
        EndpointConfigName=n["config"], ProductionVariants=[production_variant(args, n["model"])]
    )
    sm.create_endpoint(EndpointName=n["endpoint"], EndpointConfigName=n["config"])
    if args.wait:
        # Neuron endpoints can take 20+ minutes (download, NEFF load, health check).
        sm.get_waiter("endpoint_in_service").wait(
            EndpointName=n["endpoint"], WaiterConfig={"Delay": 30, "MaxAttempts": 120}
        )


def register_scaling(aas: Any, args: argparse.Namespace, n: dict[str, str]) -> None:
    rid = resource_id(n["endpoint"], args.variant)
    # The scalable target can be registered before the endpoint is InService; the
    # policy only acts once the variant exists (verify on a real account: if
    # registration is refused while Creating, deploy with --wait).
    aas.register_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId=rid,
        ScalableDimension=SCALABLE_DIMENSION,
        MinCapacity=args.min_instances,
        MaxCapacity=args.max_instances,
    )
    aas.put_scaling_policy(
        PolicyName=n["policy"],
        ServiceNamespace="sagemaker",
        ResourceId=rid,
        ScalableDimension=SCALABLE_DIMENSION,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration=policy_config(args, n["endpoint"]),
    )


def deploy(args: argparse.Namespace, sm: Any, aas: Any) -> None:
    if not 1 <= args.min_instances <= args.max_instances:
        raise SystemExit("need 1 <= --min-instances <= --max-instances")
    n = names(args.name)
    create_model(sm, args, n)
    create_endpoint(sm, args, n)
    if not args.no_autoscaling:
        register_scaling(aas, args, n)
    print(f"endpoint {n['endpoint']} ({args.instance_type} x{args.instance_count}) created")


def ignore_missing(call: Callable[..., Any], **kwargs: Any) -> bool:
    """Runs a delete call; returns False where the thing was already gone."""
    try:
        call(**kwargs)
        return True
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        message = e.response.get("Error", {}).get("Message", "")
        # SageMaker answers a missing resource with ValidationException ("Could not
        # find ..."); Application Auto Scaling documents ObjectNotFoundException
        # (moto 5.2 answers ValidationException "No scaling policy found" and
        # "No scalable target found").
        missing = (
            "could not find", "not found", "does not exist", "no scaling policy found", "no scalable target found"
        )
        if code == "ObjectNotFoundException" or (
            code == "ValidationException" and any(m in message.lower() for m in missing)
        ):
            return False
        raise


def delete(args: argparse.Namespace, sm: Any, aas: Any) -> None:
    n = names(args.name)
    rid = resource_id(n["endpoint"], args.variant)
    steps: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
        (
            "scaling policy",
            aas.delete_scaling_policy,
            dict(PolicyName=n["policy"], ServiceNamespace="sagemaker", ResourceId=rid,
                 ScalableDimension=SCALABLE_DIMENSION),
        ),
        (
            "scalable target",
            aas.deregister_scalable_target,
            dict(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=SCALABLE_DIMENSION),
        ),
        ("endpoint", sm.delete_endpoint, dict(EndpointName=n["endpoint"])),
        ("endpoint config", sm.delete_endpoint_config, dict(EndpointConfigName=n["config"])),
        ("model", sm.delete_model, dict(ModelName=n["model"])),
    ]
    for what, call, kwargs in steps:
        print(f"{what}: {'deleted' if ignore_missing(call, **kwargs) else 'already gone'}")


def describe(args: argparse.Namespace, sm: Any, aas: Any) -> None:
    n = names(args.name)
    endpoint = sm.describe_endpoint(EndpointName=n["endpoint"])
    policies = aas.describe_scaling_policies(
        ServiceNamespace="sagemaker", ResourceId=resource_id(n["endpoint"], args.variant)
    )["ScalingPolicies"]
    out = {
        "EndpointStatus": endpoint["EndpointStatus"],
        "FailureReason": endpoint.get("FailureReason"),
        "ProductionVariants": endpoint.get("ProductionVariants", []),
        "ScalingPolicies": [
            {"PolicyName": p["PolicyName"], **p.get("TargetTrackingScalingPolicyConfiguration", {})}
            for p in policies
        ],
    }
    print(json.dumps(out, indent=2, default=str))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--region", help="AWS region (default: the boto3 session's)")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--name", default="inflight", help="endpoint name; the others derive from it")
        sp.add_argument("--variant", default="AllTraffic")

    d = sub.add_parser("deploy", help="create model, endpoint config, endpoint and scaling")
    common(d)
    d.add_argument("--image-uri", required=True, help="ECR image with `serve` as its entrypoint command")
    d.add_argument("--role-arn", required=True, help="SageMaker execution role (reads ECR and the S3 artifact)")
    d.add_argument("--model-data", help="s3://.../model.tar.gz, or an s3://.../prefix/ copied uncompressed; "
                   "omit for an image with the model baked in")
    d.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="container environment (INFLIGHT_* flags), repeatable; wins over the defaults")
    d.add_argument("--instance-type", default="ml.inf2.xlarge")
    d.add_argument("--instance-count", type=int, default=1)
    d.add_argument("--volume-size", type=int, default=64, help="GiB of EBS for Neuron instance types")
    d.add_argument("--startup-timeout", type=int, help="ContainerStartupHealthCheckTimeoutInSeconds (60-3600)")
    d.add_argument("--download-timeout", type=int, help="ModelDataDownloadTimeoutInSeconds (60-3600)")
    d.add_argument("--ami-version", help=f"InferenceAmiVersion (default on Neuron types: {NEURON_AMI})")
    d.add_argument("--wait", action="store_true", help="wait until the endpoint is InService")
    d.add_argument("--no-autoscaling", action="store_true")
    d.add_argument("--min-instances", type=int, default=1)
    d.add_argument("--max-instances", type=int, default=4)
    d.add_argument("--scale-on", choices=["invocations", "concurrency", "queue"], default="invocations",
                   help="invocations: SageMakerVariantInvocationsPerInstance (per minute); concurrency: "
                   "SageMakerVariantConcurrentRequestsPerModelHighResolution; queue: the CloudWatch metric "
                   f"{QUEUE_METRIC_NAME}, which something must publish (see README)")
    d.add_argument("--target", type=float, default=60.0,
                   help="target value in the chosen metric's unit; a placeholder: size it from `inflight bench` "
                   "against one instance")
    d.add_argument("--metric-namespace", default=QUEUE_METRIC_NAMESPACE, help="CloudWatch namespace for --scale-on queue")
    d.add_argument("--scale-out-cooldown", type=int, default=60)
    d.add_argument("--scale-in-cooldown", type=int, default=600)
    d.set_defaults(func=deploy)

    x = sub.add_parser("delete", help="delete scaling, endpoint, config and model; missing parts are skipped")
    common(x)
    x.set_defaults(func=delete)

    s = sub.add_parser("describe", help="endpoint status, variants and scaling policies as JSON")
    common(s)
    s.set_defaults(func=describe)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    session = boto3.session.Session(region_name=args.region)
    args.func(args, session.client("sagemaker"), session.client("application-autoscaling"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
