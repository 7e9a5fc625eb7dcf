"""The official Feetech SDK's port, as the tests use it against the simulator."""

from __future__ import annotations

from scservo_sdk import PortHandler


class Port(PortHandler):
    """The SDK port with a packet timeout like LeRobot's patch (bytes x t_byte + 3 t_byte + margin) but a
    200 ms margin, so that scheduling stalls on a loaded 2-core CI machine never pass for a lost reply."""

    def setPacketTimeout(self, packet_length: int) -> None:  # noqa: N802 (SDK name)
        self.packet_start_time = self.getCurrentTime()
        self.packet_timeout = self.tx_time_per_byte * (packet_length + 3) + 200.0
