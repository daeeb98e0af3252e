#!/usr/bin/env python3
"""A federated client in Python, from federated/proto/strata_fed.proto alone.

Fetches the global model from a strata-fedserver, takes one SGD step with
NumPy on a batch of Fashion-MNIST (an MLP: the tensors come as weight/bias
pairs in GetModel's order, ReLU between), submits the change as an FP32
delta in chunks, and reads the server's status. Shows the contract:
metadata `authorization: Bearer <token>`, tensors in GetModel's order,
chunks within ClientConfig.max_chunk_bytes, base_version and sequence.

The stubs are generated from the .proto when the example runs (see
README.md here); none are committed.

  fed_client.py --server HOST:PORT --client ID --token-file FILE
                --stubs DIR --data DIR [--operator-token-file FILE]
"""
import argparse
import gzip
import struct
import sys
import time

import grpc
import numpy as np


def load_batch(data_dir, n, seed=0):
    """n images (flattened, in [0, 1]) and labels from the IDX files."""
    with gzip.open(f"{data_dir}/train-images-idx3-ubyte.gz") as f:
        magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 2051, "not an IDX image file"
        images = np.frombuffer(f.read(), dtype=np.uint8).reshape(count, rows * cols)
    with gzip.open(f"{data_dir}/train-labels-idx1-ubyte.gz") as f:
        magic, count = struct.unpack(">II", f.read(8))
        assert magic == 2049, "not an IDX label file"
        labels = np.frombuffer(f.read(), dtype=np.uint8)
    idx = np.random.default_rng(seed).choice(len(labels), n, replace=False)
    return images[idx].astype(np.float32) / 255.0, labels[idx].astype(np.int64)


def forward(params, x):
    """Logits and the activations backprop needs."""
    acts = [x]
    h = x
    for i in range(0, len(params), 2):
        w, b = params[i], params[i + 1]
        h = h @ w.T + b
        if i + 2 < len(params):
            h = np.maximum(h, 0.0)
        acts.append(h)
    return h, acts


def loss_and_grads(params, x, y):
    logits, acts = forward(params, x)
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    g = p
    g[np.arange(len(y)), y] -= 1.0
    g /= len(y)
    grads = [None] * len(params)
    for i in range(len(params) - 2, -1, -2):
        a_in = acts[i // 2]
        grads[i] = g.T @ a_in
        grads[i + 1] = g.sum(axis=0)
        if i > 0:
            g = (g @ params[i]) * (acts[i // 2] > 0)
    return loss, grads


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", required=True)
    ap.add_argument("--client", required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--operator-token-file")
    ap.add_argument("--stubs", required=True, help="directory of the generated strata_fed_pb2*.py")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--lr", type=float, default=0.1)
    args = ap.parse_args()
    sys.path.insert(0, args.stubs)
    import strata_fed_pb2 as pb
    import strata_fed_pb2_grpc as rpc

    token = open(args.token_file).read().split()[-1]
    auth = [("authorization", f"Bearer {token}")]
    channel = grpc.insecure_channel(args.server)
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = rpc.FederationStub(channel)

    # GetModel: info first, then per tensor a header and its data chunks.
    info, order, tensors, cur = None, [], {}, None
    for chunk in stub.GetModel(pb.GetModelRequest(client_id=args.client, have_version=0),
                               metadata=auth, timeout=60):
        part = chunk.WhichOneof("part")
        if part == "info":
            info = chunk.info
        elif part == "tensor":
            cur = chunk.tensor
            assert cur.encoding == pb.FP32, "the model always comes as FP32"
            order.append((cur.name, tuple(cur.shape)))
            tensors[cur.name] = bytearray()
        else:
            tensors[cur.name] += chunk.data
    cfg = info.config
    print(f"fetched version {info.version} of model {info.model_name}: {len(order)} tensors, "
          f"{info.num_parameters} values; mode {cfg.mode}; limits: update <= "
          f"{cfg.max_update_bytes} bytes, message <= {cfg.max_chunk_bytes} bytes, "
          f"num_samples <= {cfg.max_num_samples}")
    params = [np.frombuffer(bytes(tensors[n]), dtype="<f4").reshape(s).copy() for n, s in order]

    # One SGD step on a batch.
    x, y = load_batch(args.data, 256)
    before, grads = loss_and_grads(params, x, y)
    delta = [-args.lr * g.astype(np.float32) for g in grads]
    after, _ = loss_and_grads([p + d for p, d in zip(params, delta)], x, y)
    print(f"one SGD step (lr {args.lr}) on 256 images: loss {before:.4f} -> {after:.4f}")
    if not after < before:
        sys.exit("the step did not lower the loss")

    # SubmitUpdate: info, then per tensor (in GetModel's order) a header and
    # its payload in chunks well below max_chunk_bytes.
    chunk_bytes = min(1 << 20, cfg.max_chunk_bytes // 2)
    sequence = int(time.time() * 1e6)  # strictly increasing per client, >= 1

    def update_stream():
        yield pb.UpdateChunk(info=pb.UpdateInfo(
            client_id=args.client, base_version=info.version, num_samples=len(y),
            sequence=sequence, kind=pb.DELTA, round=cfg.round, num_tensors=len(order)))
        for (name, shape), d in zip(order, delta):
            payload = d.astype("<f4").tobytes()
            yield pb.UpdateChunk(tensor=pb.TensorHeader(
                name=name, shape=list(shape), encoding=pb.FP32, payload_bytes=len(payload)))
            for off in range(0, len(payload), chunk_bytes):
                yield pb.UpdateChunk(data=payload[off:off + chunk_bytes])

    reply = stub.SubmitUpdate(update_stream(), metadata=auth, timeout=60)
    print(f"submitted: update {reply.update_id}, server at version {reply.current_version}, "
          f"staleness {reply.staleness}, weight {reply.weight:g}, clipped {reply.clipped}")

    # The same sequence again is a replay: ALREADY_EXISTS (a client that
    # retries after a lost reply reads it as "already recorded").
    try:
        stub.SubmitUpdate(update_stream(), metadata=auth, timeout=60)
        sys.exit("a replayed sequence was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.ALREADY_EXISTS, e
        print(f"replay refused: {e.code().name}: {e.details()}")

    if args.operator_token_file:
        op = open(args.operator_token_file).read().strip()
        s = stub.GetStatus(pb.StatusRequest(), metadata=[("authorization", f"Bearer {op}")],
                           timeout=30)
        print(f"status: version {s.version}, {s.accepted_updates} accepted, "
              f"{s.rejected_updates} refused, {s.enrolled_clients} enrolled")
        if s.accepted_updates < 1:
            sys.exit("the server does not count the update")


if __name__ == "__main__":
    main()
