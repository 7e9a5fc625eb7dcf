"""The protobuf messages of LeRobot's `transport` package, built from a descriptor at import time (no
generated code, no protoc): what `AsyncInference` exchanges.

    enum TransferState { TRANSFER_UNKNOWN = 0; TRANSFER_BEGIN = 1; TRANSFER_MIDDLE = 2; TRANSFER_END = 3; }
    message Observation { TransferState transfer_state = 1; bytes data = 2; }   // streamed in chunks
    message Actions { bytes data = 1; }
    message PolicySetup { bytes data = 1; }
    message Empty {}
    service AsyncInference { SendObservations(stream Observation) returns Empty; GetActions(Empty) returns
        Actions; SendPolicyInstructions(PolicySetup) returns Empty; Ready(Empty) returns Empty; }
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "transport.AsyncInference"
CHUNK_BYTES = 2 * 1024 * 1024  # LeRobot streams observations in 2 MB pieces
UNKNOWN, BEGIN, MIDDLE, END = range(4)


def _file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(name="rynn_edge_lerobot_transport.proto", package="transport")
    f.syntax = "proto3"
    enum = f.enum_type.add(name="TransferState")
    for number, name in enumerate(("TRANSFER_UNKNOWN", "TRANSFER_BEGIN", "TRANSFER_MIDDLE", "TRANSFER_END")):
        enum.value.add(name=name, number=number)
    T = descriptor_pb2.FieldDescriptorProto
    observation = f.message_type.add(name="Observation")
    state = ".transport.TransferState"
    observation.field.add(
        name="transfer_state", number=1, type=T.TYPE_ENUM, type_name=state, label=T.LABEL_OPTIONAL
    )
    observation.field.add(name="data", number=2, type=T.TYPE_BYTES, label=T.LABEL_OPTIONAL)
    for name in ("Actions", "PolicySetup"):
        f.message_type.add(name=name).field.add(
            name="data", number=1, type=T.TYPE_BYTES, label=T.LABEL_OPTIONAL
        )
    f.message_type.add(name="Empty")
    return f


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())
Observation, Actions, PolicySetup, Empty = (
    message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"transport.{name}"))
    for name in ("Observation", "Actions", "PolicySetup", "Empty")
)


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def chunked(data: bytes) -> Iterator:
    """One payload as the Observation stream LeRobot sends: BEGIN, MIDDLE..., END (one piece: END)."""
    sent = 0
    while True:
        piece = data[sent : sent + CHUNK_BYTES]
        last = sent + CHUNK_BYTES >= len(data)
        yield Observation(transfer_state=END if last else (BEGIN if sent == 0 else MIDDLE), data=piece)
        sent += CHUNK_BYTES
        if last:
            return
