from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class JoinRequest(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("already_known", "num_workers")
    ALREADY_KNOWN_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    already_known: bool
    num_workers: int
    def __init__(self, already_known: _Optional[bool] = ..., num_workers: _Optional[int] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("address", "drain_timeout_s")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    address: str
    drain_timeout_s: float
    def __init__(self, address: _Optional[str] = ..., drain_timeout_s: _Optional[float] = ...) -> None: ...

class LeaveResponse(_message.Message):
    __slots__ = ("known", "num_finished", "num_moved")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    NUM_FINISHED_FIELD_NUMBER: _ClassVar[int]
    NUM_MOVED_FIELD_NUMBER: _ClassVar[int]
    known: bool
    num_finished: int
    num_moved: int
    def __init__(self, known: _Optional[bool] = ..., num_finished: _Optional[int] = ..., num_moved: _Optional[int] = ...) -> None: ...
