"""A CRI v1 client as Python's grpcio makes one, for sandboxd's wire-level tests.

grpcio differs from Go clients at the HTTP/2 layer (over a unix socket it sends the socket
path as :authority, where Go sends "localhost"); sandboxd must serve both. Message classes
come from the official api.proto, compiled with `protoc --python_out` into the directory
given as the first argument.

    python3 cri_client.py <dir with v1_pb2.py> <socket path> [authority]

With an authority, the channel sends it as :authority instead of grpcio's own choice (the
socket path, %-encoded since grpcio 1.57), as clients such as grpc-java send the raw path.

Runs Version, RunPodSandbox, PodSandboxStatus, ListPodSandbox, StopPodSandbox,
RemovePodSandbox and an Attach to a container that does not exist (an error status), and prints one line per check.
"""
import sys

import grpc

sys.path.insert(0, sys.argv[1])
import v1_pb2 as api  # noqa: E402


def rpc(channel, service, method, request_type, response_type):
    return channel.unary_unary(
        f"/runtime.v1.{service}/{method}",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )


def main():
    options = [("grpc.default_authority", sys.argv[3])] if len(sys.argv) > 3 else []
    channel = grpc.insecure_channel("unix://" + sys.argv[2], options=options)
    print("grpcio", grpc.__version__, file=sys.stderr)
    runtime = "RuntimeService"
    version = rpc(channel, runtime, "Version", api.VersionRequest, api.VersionResponse)
    print("version", version(api.VersionRequest(version="v1"), timeout=10).runtime_name)

    run = rpc(channel, runtime, "RunPodSandbox", api.RunPodSandboxRequest, api.RunPodSandboxResponse)
    config = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name="py-pod", namespace="default", uid="py-uid", attempt=0),
        labels={"client": "grpcio"},
    )
    pod_id = run(api.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
    print("run", len(pod_id))

    status = rpc(channel, runtime, "PodSandboxStatus", api.PodSandboxStatusRequest, api.PodSandboxStatusResponse)
    st = status(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=10).status
    print("status", api.PodSandboxState.Name(st.state), st.network.ip)

    listing = rpc(channel, runtime, "ListPodSandbox", api.ListPodSandboxRequest, api.ListPodSandboxResponse)
    selector = api.PodSandboxFilter(label_selector={"client": "grpcio"})
    print("list", len(listing(api.ListPodSandboxRequest(filter=selector), timeout=10).items))

    stop = rpc(channel, runtime, "StopPodSandbox", api.StopPodSandboxRequest, api.StopPodSandboxResponse)
    stop(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    remove = rpc(channel, runtime, "RemovePodSandbox", api.RemovePodSandboxRequest, api.RemovePodSandboxResponse)
    remove(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    print("removed")

    attach = rpc(channel, runtime, "Attach", api.AttachRequest, api.AttachResponse)
    try:
        attach(api.AttachRequest(container_id="x"), timeout=10)
        print("attach answered")
    except grpc.RpcError as e:
        print("attach", e.code().name)


if __name__ == "__main__":
    main()
