"""Exec, attach and port-forward over WebSocket with the Kubernetes Python client (the
`kubernetes` package from PyPI: its ws_client speaks v5.channel.k8s.io, falling back to
v4, and port-forwards over v4 channels), against a URL sandboxd's streaming server
handed out. Prints one JSON object with what came back.

    k8s_stream.py exec URL [--stdin TEXT] [--resize COLSxROWS] [--protocol P] [--leave-after S]
    k8s_stream.py portforward URL PORT REQUEST
"""

import json
import sys
import time

from kubernetes.client import Configuration
from kubernetes.stream import ws_client


def streamed(url, stdin, resize, protocol, leave_after):
    headers = {"sec-websocket-protocol": protocol} if protocol else None
    client = ws_client.WSClient(Configuration(), ws_client.get_websocket_url(url), headers, True)
    if resize:
        cols, rows = resize.split("x")
        client.write_channel(ws_client.RESIZE_CHANNEL, json.dumps({"Width": int(cols), "Height": int(rows)}))
        time.sleep(0.3)
    if stdin is not None:
        client.write_stdin(stdin)
        # v5 ends the client's stdin; v4 has no way to, short of closing the connection.
        client.close_channel(ws_client.STDIN_CHANNEL)
    client.run_forever(timeout=float(leave_after or 30))
    if leave_after:
        # The client goes away mid-stream.
        seen = client.read_channel(ws_client.STDOUT_CHANNEL)
        client.close()
        return {"protocol": client.subprotocol, "stdout": seen}
    return {
        "protocol": client.subprotocol,
        "open": client.is_open(),
        "stdout": client.read_channel(ws_client.STDOUT_CHANNEL),
        "stderr": client.read_channel(ws_client.STDERR_CHANNEL),
        "returncode": client.returncode,
    }


def forwarded(url, port, request):
    forward = ws_client.portforward_call(Configuration(), "GET", url, query_params=[("ports", str(port))])
    sock = forward.socket(port)
    sock.settimeout(10)
    answer = b""
    try:
        sock.sendall(request.encode())
        while True:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except OSError:
        # The forward failed (its error is below) and the client closed its end.
        pass
    sock.close()
    return {"answer": answer.decode(errors="replace"), "error": forward.error(port)}


def main(argv):
    mode, url = argv[1], argv[2]
    if mode == "exec":
        options = dict(zip(argv[3::2], argv[4::2]))
        result = streamed(
            url,
            options.get("--stdin"),
            options.get("--resize"),
            options.get("--protocol"),
            options.get("--leave-after"),
        )
    elif mode == "portforward":
        result = forwarded(url, int(argv[3]), argv[4])
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv)
