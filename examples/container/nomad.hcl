# handover in a Nomad job: the image of the Containerfile, the configuration written by a
# template, a service check on handover's endpoint. `nomad job run nomad.hcl`.
#
# Reloads inside the allocation, without restarting it:
#   - a changed template (edit the text below and `nomad job run` again, or have the
#     template read Nomad variables or Consul keys) is re-rendered and handover gets SIGHUP:
#     change_mode = "signal" below. SIGHUP reports nothing back; the log says how it went;
#   - a reload with an exit status to gate on (see docs/fleet.md):
#       nomad alloc exec -task handover ALLOC_ID handover reload --config /local/handover.toml
#   - or the same as the template does, by hand: nomad alloc signal -s SIGHUP ALLOC_ID handover
job "handover-example" {
  type = "service"

  group "web" {
    count = 2

    network {
      port "http" {
        to = 8080
      }
      port "probe" {
        to = 8081
      }
    }

    # A new job version (a new image) replaces allocations one at a time, each only once
    # the one before it is healthy, by the check below.
    update {
      max_parallel     = 1
      health_check     = "checks"
      min_healthy_time = "10s"
      auto_revert      = true
    }

    service {
      name = "handover-example"
      port = "http"
      # Use provider = "consul" where Consul runs; "nomad" needs nothing else.
      provider = "nomad"

      check {
        type     = "http"
        port     = "probe"
        path     = "/ready"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "handover" {
      driver = "docker"

      config {
        image = "handover-example:latest"
        ports = ["http", "probe"]
        args  = ["--config", "/local/handover.toml"]
      }

      # SIGTERM is a clean stop; kill_timeout is longer than [worker] stop_timeout (20s).
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      template {
        destination   = "local/handover.toml"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = <<EOF
# handover in a container: PID 1 of the container, no systemd, no journal.
#
# Logs go to stdout/stderr as JSON lines (the runtime's log collector reads them), the
# probe endpoint answers /ready and /live on :8081, and `handover reload` (through
# `kubectl exec`, `nomad alloc exec`, `docker exec`) or SIGHUP replaces the workers without
# restarting the container. The Containerfile copies this file to
# /etc/handover/handover.toml; k8s.yaml mounts the same text from a ConfigMap, and nomad.hcl
# writes it with a template.

[handover]
# A directory the image's user owns (see the Containerfile): the workers' notify sockets.
runtime_dir = "/run/handover"

[[socket]]
name = "http"
listen = "0.0.0.0:8080"

[worker]
command = ["/usr/local/bin/handover-example-http"]
count = 2
# Shorter than the runtime's grace period (Kubernetes' terminationGracePeriodSeconds, 30 s
# below; Nomad's kill_timeout; docker stop -t), so that handover, not the runtime, ends the
# workers that do not finish in time.
stop_timeout = "20s"

[reload]
drain_timeout = "20s"

[control]
# Where `handover reload --config /etc/handover/handover.toml` finds it.
socket = "/run/handover/control.sock"

[logs]
format = "json"

[endpoint]
listen = "0.0.0.0:8081"
EOF
      }
    }
  }
}
