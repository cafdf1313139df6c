"""The account-command RPCs are made from their descriptors: each one exists, is ours (not
the generated UNIMPLEMENTED stub), and each batch field is one of ExecuteBatch's."""

from __future__ import annotations

from ledger.api import descriptors
from ledger.api.ledger_service import LedgerServicer
from ledger.application.handlers import handled_types
from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import ledger_pb2_grpc as pb_grpc


def test_every_rpc_of_the_service_is_implemented() -> None:
    for method in pb.DESCRIPTOR.services_by_name["LedgerService"].methods:
        ours = getattr(LedgerServicer, method.name)
        stub = getattr(pb_grpc.LedgerServiceServicer, method.name)
        assert ours is not stub, method.name


def test_each_descriptor_names_a_request_its_parser_takes_and_a_handled_command() -> None:
    service = pb.DESCRIPTOR.services_by_name["LedgerService"]
    batch_fields = {f.name for f in pb.BatchCommand.DESCRIPTOR.oneofs_by_name["command"].fields}
    for d in descriptors.ACCOUNT_COMMANDS:
        assert d.rpc in service.methods_by_name
        assert d.batch_field is None or d.batch_field in batch_fields
        assert d.command in handled_types() or d.rpc == "EnrollMember"
