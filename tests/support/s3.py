"""A real S3 over HTTP on loopback for the tests and benchmarks: moto's server mode.

moto's ThreadedMotoServer serves its S3 from a thread of this process; the objects live
in this process's memory, so `stop()` (the listening socket closed: connections are
refused, as from a bucket host that went away) and `start()` again on the same port
find the bucket and its objects as they were.
"""

import logging

import boto3
from moto.server import ThreadedMotoServer

from tests.support.processes import free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "sdsite-test",
    "AWS_SECRET_ACCESS_KEY": "sdsite-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class S3Server:
    def __init__(self, bucket: str = "sdsite-media"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        self._server = None
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request
        self.start()
        self.client = boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        )
        self.client.create_bucket(Bucket=bucket)

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        self._server.stop()
        self._server._server.server_close()  # moto's stop() leaves the socket listening
        self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def env(self, prefix: str) -> dict:
        """The settings of a process whose media are in this bucket under `prefix`."""
        return {
            "SD_MEDIA_STORAGE": "s3",
            "SD_S3_BUCKET": self.bucket,
            "SD_S3_ENDPOINT_URL": self.url,
            "SD_S3_PREFIX": prefix,
            **CREDENTIALS,
        }

    def objects(self, prefix: str) -> dict:
        """{key: size in bytes} of the objects under `prefix`."""
        listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix + "/")
        return {entry["Key"]: entry["Size"] for entry in listing.get("Contents", [])}

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
