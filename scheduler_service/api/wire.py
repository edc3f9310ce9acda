"""Why request bytes do not decode, for the INVALID_ARGUMENT that api/undecodable.py sends.

protobuf refuses a message whose `string` field holds invalid UTF-8 with a bare DecodeError; to
name the field, the bytes are parsed again with a twin of the message whose string fields are
`bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

_TWIN_PREFIX = "yaie_bytes_twin"


@dataclass(frozen=True)
class UndecodableRequest:
    """Stands in for a request the handler must refuse with INVALID_ARGUMENT."""

    reason: str


def _retype_strings(message: descriptor_pb2.DescriptorProto, package: str) -> None:
    map_entry = message.options.map_entry  # a map's key cannot be bytes: its strings stay
    for field in message.field:
        if field.type == FieldDescriptor.TYPE_STRING and not map_entry:
            field.type = FieldDescriptor.TYPE_BYTES
        if field.type_name.startswith(f".{package}."):
            field.type_name = f".{_TWIN_PREFIX}.{field.type_name[1:]}"
    for nested in message.nested_type:
        _retype_strings(nested, package)


@cache
def _bytes_twin(descriptor: Descriptor) -> type[Message]:
    """The same message with every string field turned into bytes (its own descriptor pool)."""
    file_proto = descriptor_pb2.FileDescriptorProto()
    descriptor.file.CopyToProto(file_proto)
    package = file_proto.package
    assert not file_proto.dependency, "twin files support protos without imports only"
    file_proto.name = f"{_TWIN_PREFIX}/{file_proto.name}"
    file_proto.package = f"{_TWIN_PREFIX}.{package}"
    del file_proto.service[:]
    for message in file_proto.message_type:
        _retype_strings(message, package)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    twin = pool.FindMessageTypeByName(f"{_TWIN_PREFIX}.{descriptor.full_name}")
    return message_factory.GetMessageClass(twin)


def _invalid_utf8_field(message: Message, path: str = "") -> str | None:
    """Path of the first bytes field (of a twin) that is not valid UTF-8."""
    for field, value in message.ListFields():
        name = f"{path}{field.name}"
        repeated = field.is_repeated
        items = list(enumerate(value)) if repeated else [(None, value)]
        if repeated and field.message_type and field.message_type.GetOptions().map_entry:
            continue  # our maps hold no strings
        for index, item in items:
            item_name = name if index is None else f"{name}[{index}]"
            if field.type == FieldDescriptor.TYPE_BYTES:
                try:
                    item.decode("utf-8")
                except UnicodeDecodeError:
                    return item_name
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                found = _invalid_utf8_field(item, f"{item_name}.")
                if found:
                    return found
    return None


def explain_decode_error(message_class: type[Message], data: bytes, error: Exception) -> str:
    """The reason data is not a message_class: the field with invalid UTF-8, or error."""
    if message_class.DESCRIPTOR.file.dependencies:  # no twin (e.g. reflection's protos)
        return f"malformed {message_class.DESCRIPTOR.name}: {error}"
    try:
        twin = _bytes_twin(message_class.DESCRIPTOR).FromString(data)
    except DecodeError:
        return f"malformed {message_class.DESCRIPTOR.name}: {error}"
    field = _invalid_utf8_field(twin)
    if field is None:
        return f"malformed {message_class.DESCRIPTOR.name}: {error}"
    return f"{field}: text is not valid UTF-8"
