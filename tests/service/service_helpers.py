"""Helpers shared by the service and client tests: a small corpus, in-process servers."""

from __future__ import annotations

import random

WORDS = """cell cells protein gene genes cancer patients study results treatment disease effect risk human
clinical increased expression levels mice analysis associated found role high activity function response
virus brain blood tumor immune drug therapy dna rna age women men children health care test red green
blue cat dog fish bird tree water fire earth air light dark sun moon star city country model data query
document search index vector token score retrieval""".split()


def make_docs(n: int, seed: int = 0, prefix: str = "d") -> list[dict]:
    """Deterministic documents with metadata (year, lang, even, score, nested src.kind)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 30)))
        meta = {
            "year": 2000 + i % 25,
            "lang": ("en", "fr", "de")[i % 3],
            "even": i % 2 == 0,
            "score": round(rng.random(), 3),
            "src": {"kind": "journal" if i % 4 else "preprint"},
        }
        docs.append({"id": f"{prefix}{i}", "text": text, "metadata": meta})
    return docs


def start_server(data_dir, **overrides):
    from tessera.service.server import ServerConfig, ServerThread

    return ServerThread(ServerConfig(data_dir=data_dir, **{"port": 0, "workers": 8, **overrides})).start()


def reference_index(model_dir, batches, **settings):
    """An index built in-process, independently of the service, from the same upsert batches."""
    from tessera.index import MultiVectorIndex
    from tessera.training.checkpoints import load_encoder

    enc = load_encoder(str(model_dir))
    index = MultiVectorIndex.create(None, enc.dim, nbits=2, **settings)
    for batch in batches:
        index.add([d["id"] for d in batch], enc.encode_documents([d["text"] for d in batch], progress=False))
    return enc, index


def batched(items, n):
    return [items[i : i + n] for i in range(0, len(items), n)]


def make_tls_files(folder):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""
    import datetime
    import ipaddress
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key, path):
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("tessera test CA"))
        .issuer_name(name("tessera test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    out = {"ca": folder / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(f"tessera test {role}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
        )
        if role == "server":
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        out[f"{role}_cert"] = folder / f"{role}.pem"
        out[f"{role}_key"] = folder / f"{role}.key"
        out[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, out[f"{role}_key"])
    return out


def make_tiny_model(bert_dir, out):
    """A Tessera checkpoint over a tiny random BERT (dim 16, query_maxlen 12, doc_maxlen 32)."""
    import torch

    from tessera.training.checkpoints import new_encoder, save_checkpoint
    from tessera.training.config import EncoderConfig

    torch.manual_seed(0)
    enc = new_encoder(EncoderConfig(backbone=str(bert_dir), dim=16, query_maxlen=12, doc_maxlen=32))
    return save_checkpoint(enc, out)
