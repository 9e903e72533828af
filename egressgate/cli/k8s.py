"""`egressgate k8s render`: print Kubernetes manifests for egressgate from a config file.

Owns the command line only: arguments, reading and validating the config, printing the YAML on
stdout and errors and advisories on stderr, exit status. What the manifests contain, and why, is
egressgate.tools.k8s_render.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from dataclasses import replace

from egressgate.cli.usage import usage_handler
from egressgate.config.default import BUILTIN_DEFAULT_YAML, builtin_default
from egressgate.config.load import load_config_text
from egressgate.config.model import Config
from egressgate.errors import ConfigError, ConfigIssue
from egressgate.tools import ca, k8s_central, k8s_inject, k8s_render, k8s_sidecar, k8s_verify_job
from egressgate.tools.k8s_inject import InjectOptions
from egressgate.tools.k8s_render import RenderError, RenderOptions
from egressgate.tools.redirect import DEFAULT_TCP_PORTS

K8S_DESCRIPTION = (
    "Kubernetes tooling: render the manifests that run egressgate in a cluster (k8s render), "
    "and the injection webhook's certificate (k8s certs)."
)

RENDER_DESCRIPTION = f"""\
Render everything egressgate needs on Kubernetes, from your config file, as one YAML stream for
`kubectl apply -f -`:

  ConfigMap            your config, verbatim (mounted at {k8s_render.CONFIG_PATH})
  Deployment           >= 2 hardened replicas spread across nodes, probes on the admin port
  Service              ClusterIP on the proxy port (never NodePort/LoadBalancer)
  PodDisruptionBudget  at most one proxy pod evicted at a time
  HorizontalPodAutoscaler  on CPU (leave out with --no-hpa)
  NetworkPolicy x2     the app may reach ONLY the proxy and DNS; the proxy accepts only the
                       app and reaches only DNS and the internet (no cluster ranges, no
                       169.254.0.0/16 metadata)
  ConfigMap            <name>-client-env: HTTP(S)_PROXY/NO_PROXY for the app (envFrom)
  Job (--verify-job)   `egressgate verify --attack` run once with the app's labels and variables,
                       and the ServiceAccount/Role/RoleBinding that let it read NetworkPolicies

The config is validated first; without --config the built-in default (allows nothing) is used.
A hosts_file next to the config goes into the same ConfigMap (it resolves the same way in the
pod); credentials (auth users_file, TLS keys) never do: put those in Secrets.
Notes about things to do by hand (files to mount, a label to add to the app) go to stderr.
See docs/kubernetes.md.
"""

RENDER_EPILOG = """\
examples:
  kubectl create namespace egressgate
  egressgate k8s render --config egress.yaml --app-label app=my-app --app-namespace shop \\
      | kubectl apply -f -

  # EKS with custom networking (pods in 100.64.0.0/10) and NodeLocal DNSCache
  egressgate k8s render -c egress.yaml --app-label app=my-app \\
      --cluster-cidr 100.64.0.0/10 --dns-cidr 169.254.20.10/32 > egressgate.yaml

  # then, in the app's container spec:
  #   envFrom: [{configMapRef: {name: egressgate-client-env}}]

exit status: 0 rendered; 2 invalid config or options (every problem is listed on stderr).
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "k8s",
        help="Kubernetes manifests (k8s render, k8s certs)",
        description=K8S_DESCRIPTION,
    )
    commands = parser.add_subparsers(dest="k8s_command", metavar="SUBCOMMAND")
    parser.set_defaults(handler=usage_handler(parser))
    render = commands.add_parser(
        "render",
        help="print Deployment, Service, NetworkPolicies... for a config",
        description=RENDER_DESCRIPTION,
        epilog=RENDER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_render_arguments(render)
    render.set_defaults(handler=_run)
    certs = commands.add_parser(
        "certs",
        help="generate a CA and the injection webhook's serving certificate (a Secret)",
        description=CERTS_DESCRIPTION,
        epilog=CERTS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_certs_arguments(certs)
    certs.set_defaults(handler=_run_certs)


CERTS_DESCRIPTION = """\
Generate a private CA and a serving certificate for the injection webhook's Service
(<name>-inject.<namespace>.svc), for clusters without cert-manager. Prints the
kubernetes.io/tls Secret (<name>-inject-tls, with ca.crt) on stdout and writes the CA
certificate to --ca-out, which `k8s render --inject --ca-bundle` puts into the webhook
configuration's caBundle. The CA's private key is not kept: to rotate, run both again.
"""

CERTS_EPILOG = """\
examples:
  egressgate k8s certs --ca-out inject-ca.crt | kubectl apply -f -
  egressgate k8s render -c egress.yaml --inject --ca-bundle inject-ca.crt | kubectl apply -f -

exit status: 0 written; 2 invalid options or the CA file cannot be written.
"""


def _add_certs_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = RenderOptions()
    parser.add_argument(
        "--namespace",
        "-n",
        default=defaults.namespace,
        help="the webhook's namespace (%(default)s)",
    )
    parser.add_argument(
        "--name", default=defaults.name, help="the --name given to k8s render (%(default)s)"
    )
    parser.add_argument(
        "--ca-out", required=True, metavar="FILE", help="write the CA certificate (PEM) here"
    )
    parser.add_argument(
        "--validity-days",
        type=int,
        default=825,
        metavar="DAYS",
        help="validity of both certificates (%(default)s)",
    )


def _run_certs(args: argparse.Namespace) -> int:
    from egressgate.tools import k8s_certs  # needs the cryptography package

    problems = k8s_render.render_problems(
        replace(RenderOptions(), name=args.name, namespace=args.namespace)
    )
    if not 1 <= args.validity_days <= 3650:
        problems.append(f"--validity-days {args.validity_days}: 1 to 3650")
    if problems:
        _print_lines(problems, "egressgate k8s certs: ")
        return 2
    service = f"{args.name}-inject"
    certs = k8s_certs.generate(k8s_certs.service_names(service, args.namespace), args.validity_days)
    try:
        with open(args.ca_out, "wb") as handle:
            handle.write(certs.ca_pem)
    except OSError as exc:
        print(f"egressgate k8s certs: --ca-out: {exc}", file=sys.stderr)
        return 2
    secret = k8s_certs.tls_secret(certs, f"{service}-tls", args.namespace)
    sys.stdout.write(k8s_render.to_yaml([secret]))
    return 0


def _add_render_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = RenderOptions()
    where = parser.add_argument_group("what and where")
    where.add_argument(
        "--mode",
        choices=("explicit", "transparent", "dns"),
        default="explicit",
        help="explicit: the central proxy for apps that honour proxy variables (default); "
        "transparent: a sidecar, its nftables init container and NetworkPolicy for one app's "
        "pods; dns: the central proxy with its DNS guard answering with its own address "
        "(dns_answer: proxy) and its transparent listener behind the Service's 80/443 "
        "(apps that ignore proxy variables, docs/transparent.md)",
    )
    where.add_argument(
        "--init-image",
        metavar="IMAGE",
        help="--mode transparent: image of the init container, which runs `nft` (default: "
        "--image; it must contain nftables)",
    )
    where.add_argument(
        "--redirect-port",
        action="append",
        type=int,
        default=[],
        metavar="PORT",
        help="--mode transparent: TCP port redirected to the sidecar (repeatable; default 80 "
        "and 443)",
    )
    where.add_argument("--config", "-c", metavar="FILE", help="egressgate config file")
    where.add_argument(
        "--namespace", "-n", default=defaults.namespace, help="namespace of the proxy (%(default)s)"
    )
    where.add_argument(
        "--name", default=defaults.name, help="name of the proxy's objects (%(default)s)"
    )
    where.add_argument(
        "--image", default=defaults.image, help="container image (%(default)s)", metavar="IMAGE"
    )
    where.add_argument(
        "--replicas",
        type=int,
        default=defaults.replicas,
        metavar="N",
        help="replicas, at least 2; the HPA minimum (%(default)s)",
    )
    _add_inject_arguments(parser)
    app = parser.add_argument_group("the application")
    app.add_argument(
        "--app-label",
        action="append",
        type=_label,
        default=[],
        metavar="KEY=VALUE",
        help="label of the app's pods (repeatable; all must match). Default: "
        f"{k8s_render.DEFAULT_CLIENT_LABEL}=<name>, which you add to the app's pods",
    )
    app.add_argument(
        "--app-namespace",
        metavar="NS",
        help="namespace the app runs in (default: the proxy's)",
    )
    network = parser.add_argument_group("cluster network")
    network.add_argument(
        "--cluster-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="pod or service range, added to "
        + ", ".join(k8s_render.DEFAULT_CLUSTER_CIDRS)
        + " (repeatable): excluded from the proxy's egress, put in NO_PROXY",
    )
    network.add_argument(
        "--no-proxy",
        action="append",
        default=[],
        metavar="EXTRA",
        help="more hosts, .suffixes or IPs the app reaches directly, for NO_PROXY (repeatable; "
        "the app's NetworkPolicy still allows only the proxy and DNS)",
    )
    network.add_argument(
        "--dns-namespace",
        default=defaults.dns_namespace,
        metavar="NS",
        help="namespace of the cluster DNS pods (%(default)s)",
    )
    network.add_argument(
        "--dns-label",
        action="append",
        type=_label,
        default=[],
        metavar="KEY=VALUE",
        help="label of the cluster DNS pods (repeatable; default k8s-app=kube-dns)",
    )
    network.add_argument(
        "--dns-port",
        type=int,
        default=defaults.dns_port,
        metavar="PORT",
        help="port the DNS pods listen on (%(default)s; OpenShift: 5353)",
    )
    network.add_argument(
        "--dns-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="DNS servers that are not pods, e.g. NodeLocal DNSCache 169.254.20.10/32",
    )
    network.add_argument(
        "--metrics-namespace",
        metavar="NS",
        help="only pods of this namespace may reach the admin port (default: any pod)",
    )
    network.add_argument(
        "--metrics-label",
        action="append",
        type=_label,
        default=[],
        metavar="KEY=VALUE",
        help="only pods with this label may reach the admin port (repeatable)",
    )
    network.add_argument(
        "--service-metrics-port",
        action="store_true",
        help="also expose the admin port on the Service, named 'metrics'",
    )
    _add_sizing_arguments(parser, defaults)
    _add_verify_job_arguments(parser)


def _add_verify_job_arguments(parser: argparse.ArgumentParser) -> None:
    job = parser.add_argument_group(
        "verify Job (explicit mode): `egressgate verify --attack` run as the app"
    )
    job.add_argument(
        "--verify-job",
        action="store_true",
        help="also render a Job (with its ServiceAccount, Role, RoleBinding) in the app's "
        "namespace that runs verify --attack with the app's labels and proxy variables",
    )
    job.add_argument(
        "--verify-allowed",
        action="append",
        default=[],
        metavar="URL",
        help="--allowed for the Job (repeatable)",
    )
    job.add_argument(
        "--verify-denied",
        action="append",
        default=[],
        metavar="URL",
        help="--denied for the Job (repeatable)",
    )
    job.add_argument(
        "--verify-outside-resolver", metavar="IP", help="--outside-resolver for the Job"
    )
    job.add_argument("--verify-doh-name", metavar="NAME", help="--doh-name for the Job")


def _verify_job(args: argparse.Namespace) -> k8s_verify_job.VerifyJobOptions | None:
    if not args.verify_job:
        return None
    return k8s_verify_job.VerifyJobOptions(
        allowed=tuple(args.verify_allowed),
        denied=tuple(args.verify_denied),
        outside_resolver=args.verify_outside_resolver,
        doh_name=args.verify_doh_name,
    )


def _add_inject_arguments(parser: argparse.ArgumentParser) -> None:
    inject = parser.add_argument_group(
        "the injection webhook (--inject; docs/kubernetes.md, 'Inject with a label')"
    )
    inject.add_argument(
        "--inject",
        action="store_true",
        help="render the Pod injection webhook (Deployment, Service, MutatingWebhookConfiguration, "
        "its config and certificate) instead of the proxy",
    )
    inject.add_argument(
        "--inject-failure-policy",
        choices=k8s_inject.FAILURE_POLICIES,
        default="Ignore",
        help="Ignore (default): pods start unchanged while the webhook is down; Fail: they are "
        "refused until it answers",
    )
    inject.add_argument(
        "--inject-timeout",
        type=int,
        default=k8s_inject.DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="how long the API server waits for the webhook per pod (%(default)s)",
    )
    inject.add_argument(
        "--ca-bundle",
        metavar="FILE",
        help="the CA written by `egressgate k8s certs --ca-out` (default: cert-manager issues "
        "the certificate and injects its CA)",
    )
    inject.add_argument(
        "--sidecar-admin-port",
        type=int,
        metavar="PORT",
        help="transparent injection: the sidecar config's admin_listen port (HTTP probes)",
    )


def _add_sizing_arguments(parser: argparse.ArgumentParser, defaults: RenderOptions) -> None:
    sizing = parser.add_argument_group("sizing (requests default to 100m CPU and 128Mi per worker)")
    sizing.add_argument("--cpu-request", metavar="QTY")
    sizing.add_argument("--cpu-limit", metavar="QTY", help="none by default (throttling hurts)")
    sizing.add_argument("--memory-request", metavar="QTY")
    sizing.add_argument("--memory-limit", metavar="QTY", help="default 256Mi per worker")
    sizing.add_argument(
        "--prestop-sleep",
        type=int,
        default=defaults.prestop_sleep_s,
        metavar="SECONDS",
        help="preStop sleep before SIGTERM while endpoints update (%(default)s; 0: none, for "
        "Kubernetes < 1.30)",
    )
    sizing.add_argument("--no-hpa", action="store_true", help="fixed --replicas, no autoscaler")
    sizing.add_argument(
        "--hpa-max",
        type=int,
        default=defaults.hpa_max_replicas,
        metavar="N",
        help="autoscaler maximum (%(default)s)",
    )
    sizing.add_argument(
        "--hpa-cpu-target",
        type=int,
        default=defaults.hpa_cpu_target_percent,
        metavar="PERCENT",
        help="autoscaler CPU target, %% of the request (%(default)s)",
    )


def _label(text: str) -> tuple[str, str]:
    try:
        return k8s_render.parse_label(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _options(args: argparse.Namespace) -> RenderOptions:
    defaults = RenderOptions()
    return RenderOptions(
        namespace=args.namespace,
        name=args.name,
        app_labels=dict(args.app_label),
        app_namespace=args.app_namespace,
        replicas=args.replicas,
        image=args.image,
        cluster_cidrs=tuple(args.cluster_cidr),
        no_proxy=tuple(args.no_proxy),
        dns_namespace=args.dns_namespace,
        dns_labels=dict(args.dns_label) or dict(defaults.dns_labels),
        dns_port=args.dns_port,
        dns_cidrs=tuple(args.dns_cidr),
        cpu_request=args.cpu_request,
        cpu_limit=args.cpu_limit,
        memory_request=args.memory_request,
        memory_limit=args.memory_limit,
        prestop_sleep_s=args.prestop_sleep,
        hpa=not args.no_hpa,
        hpa_max_replicas=args.hpa_max,
        hpa_cpu_target_percent=args.hpa_cpu_target,
        metrics_namespace=args.metrics_namespace,
        metrics_labels=dict(args.metrics_label),
        service_metrics_port=args.service_metrics_port,
    )


def _load(path: str | None) -> tuple[Config, str]:
    """The config and its exact text (what the ConfigMap will carry). Raises ConfigError."""
    if path is None:
        return builtin_default(), BUILTIN_DEFAULT_YAML
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError([ConfigIssue(path, None, None, f"cannot read: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue(path, None, None, "not UTF-8 text")]) from exc
    # Validate the very text that is shipped; relative paths resolve next to the file, as
    # they will next to /etc/egressgate/egress.yaml in the pod.
    # Secrets are not read: the manifests never carry them, and they need not exist here.
    base_dir = os.path.dirname(os.path.abspath(path))
    return load_config_text(text, path, base_dir=base_dir, secrets=False), text


def _files_next_to_config(config: Config, path: str | None) -> dict[str, str]:
    """The config's hosts_file and public TLS-interception files (the CA certificate, the
    upstream CA bundle) when they sit next to the config file (`hosts_file: hosts`): in the pod
    they then resolve next to /etc/egressgate/egress.yaml, keys of the same ConfigMap. Never a
    key or a secret."""
    if path is None:
        return {}
    wanted = [config.hosts_file]
    if config.tls_intercept is not None:
        wanted += [config.tls_intercept.ca_cert_file, config.tls_intercept.upstream_ca_file]
    here = os.path.dirname(os.path.abspath(path))
    files: dict[str, str] = {}
    for file in wanted:
        if file is None or os.path.dirname(file) != here:
            continue
        with open(file, encoding="utf-8") as handle:  # the loader just read it
            files[os.path.basename(file)] = handle.read()
    return files


def _with_interception(options: RenderOptions, config: Config, path: str | None) -> RenderOptions:
    """`options` plus, for tls_intercept: the config's directory, the CA certificate's text and
    the system bundle with it appended (for the apps' <name>-ca ConfigMap)."""
    if config.tls_intercept is None or path is None:
        return options
    with open(config.tls_intercept.ca_cert_file, encoding="utf-8") as handle:
        cert = handle.read()
    system = ca.find_system_bundle()
    bundle = None
    if system is not None:
        with open(system, encoding="utf-8") as handle:
            bundle = handle.read().rstrip("\n") + "\n" + cert
    return replace(
        options,
        config_dir=os.path.dirname(os.path.abspath(path)),
        ca_cert_pem=cert,
        ca_bundle_pem=bundle,
    )


def _run(args: argparse.Namespace) -> int:
    try:
        config, text = _load(args.config)
        extra_files = _files_next_to_config(config, args.config)
        options = _with_interception(
            replace(_options(args), extra_config_files=extra_files), config, args.config
        )
    except ConfigError as exc:
        _print_lines((str(issue) for issue in exc.issues), "")
        print(f"egressgate k8s render: {len(exc.issues)} config error(s)", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError) as exc:
        print(f"egressgate k8s render: cannot read a file of the config: {exc}", file=sys.stderr)
        return 2
    if args.inject:
        if args.verify_job:
            # Two different renders: one would silently be dropped.
            print(
                "egressgate k8s render: --verify-job renders the app's audit Job and --inject the "
                "webhook; run them as two renders",
                file=sys.stderr,
            )
            return 2
        return _run_inject(args, config, options)
    job = _verify_job(args)
    if job is not None and args.mode != "explicit":
        print(
            "egressgate k8s render: --verify-job is for --mode explicit: in transparent mode the "
            "probes must run inside the app's pod, next to its sidecar (kubectl exec ... "
            "egressgate verify --attack, docs/verify.md)",
            file=sys.stderr,
        )
        return 2
    try:
        if args.mode == "transparent":
            ports = tuple(args.redirect_port) or DEFAULT_TCP_PORTS
            objects = k8s_sidecar.render_sidecar(config, text, options, args.init_image, ports)
            sys.stdout.write(k8s_render.to_yaml(objects))
            return 0
        if args.mode == "dns":
            objects = k8s_central.render_central(config, text, options)
        else:
            objects = k8s_render.render(config, text, options)
            if job is not None:
                objects += k8s_verify_job.render_verify_job(config, options, job)
    except RenderError as exc:
        _print_lines(exc.problems, "egressgate k8s render: ")
        return 2
    sys.stdout.write(k8s_render.to_yaml(objects))
    _print_lines(k8s_render.advisories(config, options), "egressgate k8s render: note: ")
    return 0


def _run_inject(args: argparse.Namespace, config: Config, options: RenderOptions) -> int:
    ca_bundle = None
    if args.ca_bundle is not None:
        from egressgate.tools import k8s_certs  # needs the cryptography package

        try:
            with open(args.ca_bundle, "rb") as handle:
                ca_bundle = k8s_certs.ca_bundle(handle.read())
        except (OSError, ValueError) as exc:
            print(f"egressgate k8s render: --ca-bundle: {exc}", file=sys.stderr)
            return 2
    inject = InjectOptions(
        failure_policy=args.inject_failure_policy,
        timeout_s=args.inject_timeout,
        ca_bundle=ca_bundle,
        sidecar_admin_port=args.sidecar_admin_port,
    )
    try:
        problems = k8s_render.render_problems(options)
        if problems:
            raise RenderError(problems)
        objects = k8s_inject.render_inject(config, options, inject)
    except RenderError as exc:
        _print_lines(exc.problems, "egressgate k8s render: ")
        return 2
    sys.stdout.write(k8s_render.to_yaml(objects))
    if ca_bundle is None:
        _print_lines(
            [
                "the serving certificate comes from cert-manager (Issuer + Certificate); without "
                "cert-manager use `egressgate k8s certs` and --ca-bundle"
            ],
            "egressgate k8s render: note: ",
        )
    return 0


def _print_lines(lines: Iterable[str], prefix: str) -> None:
    for line in lines:
        print(f"{prefix}{line}", file=sys.stderr)
