"""The fake cloud (Tests/cloud/fake_cloud.py) over real TLS with a throwaway test CA, for the gateway tests."""
from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from meshd_e2e import ProcessPool, wait_until

CLOUD_DIR = Path(__file__).resolve().parents[1] / "cloud"
API_KEY = "sk-test-fake-cloud-key-0123456789"
# The fake's Bedrock: this access key ID and region (its defaults); API_KEY is the secret access key.
AWS_ACCESS_KEY_ID = "AKIDFAKECLOUD0000001"
AWS_REGION = "us-east-1"


class FakeCloud:
    def __init__(self, pool: ProcessPool, tls_dir: Path) -> None:
        subprocess.run(["bash", str(CLOUD_DIR / "make-test-ca.sh"), str(tls_dir)], check=True, timeout=60,
                       capture_output=True)
        self.ca = tls_dir / "ca.pem"
        self.proc = pool.start("fake-cloud", [sys.executable, str(CLOUD_DIR / "fake_cloud.py"), "--cert", str(tls_dir / "server.pem"),
                                              "--key", str(tls_dir / "server.key"), "--api-key", API_KEY,
                                              "--default-tokens", "8", "--slow-delay", "0.3"])

        def listening() -> str | None:
            if not self.proc.alive():
                raise self.proc.fail("fake cloud exited during start")
            for line in self.proc.log().splitlines():
                if line.startswith("LISTENING "):
                    return line.split()[1]
            return None

        self.address = wait_until(listening, 20, interval=0.05, what="fake cloud LISTENING line")
        self.url = f"https://{self.address}"

    def stats(self) -> dict[str, Any]:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        with urllib.request.urlopen(f"{self.url}/_stats", context=ctx, timeout=10) as r:
            return json.loads(r.read())

    def providers(self, key_file: Path) -> list[dict[str, Any]]:
        """openai, anthropic and gemini providers on this fake cloud, trusting its CA only."""
        key_file.write_text(API_KEY + "\n")
        key_file.chmod(0o600)
        common = {"key_file": str(key_file), "ca_file": str(self.ca)}
        return [
            {"name": "openai", "kind": "openai", "base_url": f"{self.url}/v1", **common},
            {"name": "claude", "kind": "anthropic", "base_url": f"{self.url}/v1", **common},
            {"name": "gemini", "kind": "gemini", "base_url": f"{self.url}/v1beta", **common},
            {"name": "azure", "kind": "azure", "base_url": f"{self.url}/openai/deployments/azure-gpt", "api_version": "2024-10-21",
             **common},
            {"name": "groq", "kind": "groq", "base_url": f"{self.url}/openai/v1", **common},
        ]

    def bedrock_provider(self, name: str, key_file: Path, secret: str = API_KEY, **extra: Any) -> dict[str, Any]:
        """A Bedrock provider on this fake cloud signing with `secret` as its secret access key."""
        key_file.write_text(secret + "\n")
        key_file.chmod(0o600)
        return {"name": name, "kind": "bedrock", "base_url": self.url, "region": AWS_REGION, "access_key_id": AWS_ACCESS_KEY_ID,
                "key_file": str(key_file), "ca_file": str(self.ca), **extra}


PRICES = {
    "gpt-4o-mini": {"input": 0.15, "output": 0.60, "max_output_tokens": 64},
    "claude-haiku": {"input": 0.80, "output": 4.00, "max_output_tokens": 64},
    "gemini-flash": {"input": 0.10, "output": 0.40, "max_output_tokens": 64},
    "groq/llama-3.3-70b-versatile": {"input": 0.59, "output": 0.79, "max_output_tokens": 64},  # Groq only
    "slow-gpt": {"input": 1.0, "output": 2.0, "max_output_tokens": 64},
    "openai/fail-429-gpt": {"input": 0.15, "output": 0.60},  # openai only: no fallback
    "private-gpt": {"input": 0.15, "output": 0.60},
    "fail-500-gpt": {"input": 0.15, "output": 0.60},
    "cut-stream-gpt": {"input": 100.0, "output": 100.0, "max_output_tokens": 64},
    "azure/azure-gpt": {"input": 0.15, "output": 0.60, "max_output_tokens": 64},
}
