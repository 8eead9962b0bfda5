"""The bed's proxy tunnels CONNECT and forwards absolute-form requests, counting each by
target, and EC2 over HTTPS behind it verifies with the bed's CA (no root: on loopback)."""

import http.server
import ssl
import threading
import urllib.error
import urllib.request

import pytest

from testenv import proxy

NAME = "ec2.us-east-2.amazonaws.com"


class Plain(http.server.BaseHTTPRequestHandler):
    """Stands in for the plain EC2 endpoint: answers the request target it was sent."""

    def do_GET(self):
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Plain)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    ca_file = tmp_path_factory.mktemp("proxy") / "ca.pem"
    state, answer = proxy.start("127.0.0.1", "us-east-2", plain.server_port, ca_file)
    yield state, answer, plain.server_port
    plain.shutdown()


def get(url: str, proxies: dict[str, str], ca_file: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler(proxies),
                                         urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca_file)))
    try:
        with opener.open(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def test_https_by_name_goes_through_a_connect_tunnel_and_verifies_with_the_bed_ca(bed):
    state, answer, _ = bed
    url = answer["ec2_https_endpoint_by_name"] + "/by-name"
    assert get(url, {"https": answer["proxy_url"]}, answer["ca_file"]) == (200, "/by-name")
    port = answer["ec2_https_endpoint"].rsplit(":", 1)[1]
    assert state.counts()["connect"][f"{NAME}:{port}"] == 1


def test_https_by_address_verifies_without_the_proxy(bed):
    _, answer, _ = bed
    assert get(answer["ec2_https_endpoint"] + "/direct", {}, answer["ca_file"]) == (200, "/direct")


def test_an_absolute_form_request_is_forwarded_and_an_unknown_name_refused(bed):
    state, answer, plain_port = bed
    url = f"http://{NAME}:{plain_port}/forwarded"
    assert get(url, {"http": answer["proxy_url"]}, answer["ca_file"]) == (200, url)  # the absolute form, as it came
    assert state.counts()["forward"][f"{NAME}:{plain_port}"] == 1
    assert get("http://elsewhere.example:80/", {"http": answer["proxy_url"]}, answer["ca_file"])[0] == 502
    assert state.counts()["forward"]["elsewhere.example:80"] == 1
