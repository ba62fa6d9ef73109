"""Helpers for integration tests: real RabbitMQ vhosts, Orthanc processes, DICOM peers, data."""
