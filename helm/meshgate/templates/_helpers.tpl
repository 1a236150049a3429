{{/* Names --------------------------------------------------------------------------- */}}

{{- define "meshgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meshgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A name with a suffix, kept within 63 characters. */}}
{{- define "meshgate.suffixed" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- printf "%s-%s" (include "meshgate.fullname" $root | trunc (int (sub 62 (len $suffix)))) $suffix | trimSuffix "-" -}}
{{- end -}}

{{- define "meshgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meshgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "meshgate.labels" -}}
helm.sh/chart: {{ include "meshgate.chart" . }}
{{ include "meshgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: meshgate
meshgate.io/region: {{ .Values.region | quote }}
{{- end -}}

{{- define "meshgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "meshgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "meshgate.imageRef" -}}
{{- $image := index . 0 -}}
{{- $defaultTag := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $defaultTag $image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/* The mesh file -------------------------------------------------------------------- */}}

{{- define "meshgate.configMapName" -}}
{{- default (include "meshgate.fullname" .) .Values.config.existingConfigMap -}}
{{- end -}}

{{- define "meshgate.configMapKey" -}}
{{- if .Values.config.existingConfigMap -}}{{ .Values.config.existingConfigMapKey }}{{- else -}}mesh.yaml{{- end -}}
{{- end -}}

{{/* The mesh file text (required unless an existing ConfigMap holds it). */}}
{{- define "meshgate.meshText" -}}
{{- if not .Values.config.existingConfigMap -}}
{{- required "config.mesh is required: the mesh file (YAML with the root key event_mesh), the same in every region's release; or set config.existingConfigMap" .Values.config.mesh -}}
{{- end -}}
{{- end -}}

{{/*
The mesh file parsed, as JSON ({} when the chart cannot read it: an existing ConfigMap).
Fails when the text is not YAML or has no event_mesh.regions.
*/}}
{{- define "meshgate.mesh" -}}
{{- $text := include "meshgate.meshText" . -}}
{{- if $text -}}
{{- $doc := fromYaml $text -}}
{{- if hasKey $doc "Error" -}}
{{- fail (printf "config.mesh is not valid YAML: %s" (get $doc "Error")) -}}
{{- end -}}
{{- $mesh := get $doc "event_mesh" -}}
{{- if not (kindIs "map" $mesh) -}}
{{- fail "config.mesh has no root key event_mesh: it must be a Meshgate mesh file (event_mesh: {regions: [...], routing: [...]})" -}}
{{- end -}}
{{- if not (kindIs "slice" (get $mesh "regions")) -}}
{{- fail "config.mesh: event_mesh.regions must be a list of regions" -}}
{{- end -}}
{{- $mesh | toJson -}}
{{- else -}}
{{- dict | toJson -}}
{{- end -}}
{{- end -}}

{{/*
This release's region of the mesh file, as JSON ({} when the file cannot be read). Fails,
naming the regions of the file, when `region` is not one of them.
*/}}
{{- define "meshgate.meshRegion" -}}
{{- $mesh := include "meshgate.mesh" . | fromJson -}}
{{- $found := dict -}}
{{- if $mesh -}}
{{- $names := list -}}
{{- $templated := false -}}
{{- range $r := (get $mesh "regions") -}}
{{- if kindIs "map" $r -}}
{{- $name := toString (get $r "name") -}}
{{- $names = append $names $name -}}
{{- if contains "${" $name -}}{{- $templated = true -}}{{- end -}}
{{- if eq $name $.Values.region -}}{{- $found = $r -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (not $found) (not $templated) -}}
{{- fail (printf "region %q is not a region of the mesh file (config.mesh has: %s); set region to one of them" .Values.region (join ", " $names)) -}}
{{- end -}}
{{- end -}}
{{- $found | toJson -}}
{{- end -}}

{{/* A mesh-file duration (seconds as a number, or "500ms", "10s", "1h30m", ...) in seconds. */}}
{{- define "meshgate.durationSeconds" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{- $units := dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0 -}}
{{- $total := 0.0 -}}
{{- range $part := regexFindAll "[0-9]+(\\.[0-9]+)?\\s*(ms|s|m|h|d)" $v -1 -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $part | float64 -}}
{{- $unit := regexFind "(ms|s|m|h|d)$" $part -}}
{{- $total = addf $total (mulf $num (get $units $unit)) -}}
{{- end -}}
{{- $total -}}
{{- else -}}
{{- $v | float64 -}}
{{- end -}}
{{- end -}}

{{/* The gateway's drain time in whole seconds. */}}
{{- define "meshgate.drainSeconds" -}}
{{- if not (kindIs "invalid" .Values.gateway.shutdownGraceSeconds) -}}
{{- .Values.gateway.shutdownGraceSeconds | int -}}
{{- else -}}
{{- $mesh := include "meshgate.mesh" . | fromJson -}}
{{- $settings := get $mesh "settings" -}}
{{- $grace := "10s" -}}
{{- if and (kindIs "map" $settings) (hasKey $settings "shutdown_grace") -}}
{{- $grace = get $settings "shutdown_grace" -}}
{{- end -}}
{{- if and (kindIs "string" $grace) (contains "${" $grace) -}}
{{- fail "the mesh file's settings.shutdown_grace uses ${VAR}: set gateway.shutdownGraceSeconds to the drain time it resolves to" -}}
{{- end -}}
{{- include "meshgate.durationSeconds" $grace | float64 | ceil | int -}}
{{- end -}}
{{- end -}}

{{/* terminationGracePeriodSeconds: at least drain + preStop sleep. */}}
{{- define "meshgate.terminationGrace" -}}
{{- $drain := include "meshgate.drainSeconds" . | int -}}
{{- $floor := add $drain (.Values.gateway.preStopSleepSeconds | int) -}}
{{- if not (kindIs "invalid" .Values.gateway.terminationGracePeriodSeconds) -}}
{{- $set := .Values.gateway.terminationGracePeriodSeconds | int -}}
{{- if lt $set $floor -}}
{{- fail (printf "gateway.terminationGracePeriodSeconds is %d but the gateway needs at least %d s to stop: drain time %d s (settings.shutdown_grace) + preStopSleepSeconds %d s; raise it, or leave it empty to get %d" $set $floor $drain (.Values.gateway.preStopSleepSeconds | int) (add $floor 10)) -}}
{{- end -}}
{{- $set -}}
{{- else -}}
{{- add $floor 10 -}}
{{- end -}}
{{- end -}}

{{/*
The metrics port: the port of this region's `metrics:` in the mesh file, else metrics.port.
Fails when metrics are on and the region has no `metrics:`, or listens on a host the pod
cannot be scraped on.
*/}}
{{- define "meshgate.metricsPort" -}}
{{- $region := include "meshgate.meshRegion" . | fromJson -}}
{{- $port := .Values.metrics.port | int -}}
{{- if $region -}}
{{- $addr := get $region "metrics" | default "" | toString -}}
{{- if not $addr -}}
{{- if .Values.metrics.enabled -}}
{{- fail (printf "metrics.enabled is true but region %q of the mesh file has no `metrics:` address, so the gateway serves no metrics; add `metrics: 0.0.0.0:%d` to that region (a port of its own in the file) or set metrics.enabled=false" .Values.region $port) -}}
{{- end -}}
{{- else if not (contains "${" $addr) -}}
{{- $host := regexReplaceAll ":[0-9]+$" $addr "" -}}
{{- if and .Values.metrics.enabled (not (has $host (list "" "0.0.0.0" "::" "[::]"))) -}}
{{- fail (printf "region %q has `metrics: %s`: inside a pod the gateway binds that host, so Prometheus cannot scrape it; use 0.0.0.0:PORT" .Values.region $addr) -}}
{{- end -}}
{{- $port = regexFind "[0-9]+$" $addr | int -}}
{{- end -}}
{{- end -}}
{{- $port -}}
{{- end -}}

{{/*
The port of the gateway's plain-HTTP endpoint (metrics, /healthz, /readyz): the port of this
region's `metrics:` when the pod can be reached there (host 0.0.0.0 or ::), metrics.port when the
chart cannot read the address (existingConfigMap, ${VAR}); empty when the region serves no HTTP
(no `metrics:`, or a host only the pod itself can reach).
*/}}
{{- define "meshgate.httpPort" -}}
{{- $region := include "meshgate.meshRegion" . | fromJson -}}
{{- if not $region -}}
{{- .Values.metrics.port | int -}}
{{- else -}}
{{- $addr := get $region "metrics" | default "" | toString -}}
{{- if contains "${" $addr -}}
{{- .Values.metrics.port | int -}}
{{- else if $addr -}}
{{- $host := regexReplaceAll ":[0-9]+$" $addr "" -}}
{{- if has $host (list "" "0.0.0.0" "::" "[::]") -}}
{{- regexFind "[0-9]+$" $addr | int -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
"http" when the probes ask /healthz and /readyz on the HTTP port, "grpc" when they use the gRPC
health service (only possible without TLS: a kubelet gRPC probe has no client certificate).
*/}}
{{- define "meshgate.probeKind" -}}
{{- if include "meshgate.httpPort" . -}}
http
{{- else if .Values.tls.enabled -}}
{{- fail (printf "tls.enabled: the gRPC port then requires a client certificate of the mesh CA, which Kubernetes probes cannot show, so the probes use HTTP /healthz and /readyz on the region's `metrics:` address; region %q has none the kubelet can reach: add `metrics: 0.0.0.0:%d` to it in the mesh file" .Values.region (.Values.metrics.port | int)) -}}
{{- else -}}
grpc
{{- end -}}
{{- end -}}

{{/* TLS and token secrets ------------------------------------------------------------ */}}

{{- define "meshgate.tlsSecretName" -}}
{{- default (include "meshgate.suffixed" (list . "tls")) .Values.tls.existingSecret -}}
{{- end -}}

{{/* The Secret whose keys become the gateway's environment (token variables); empty when none. */}}
{{- define "meshgate.authSecretName" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else if .Values.auth.tokens -}}
{{- include "meshgate.suffixed" (list . "tokens") -}}
{{- end -}}
{{- end -}}

{{/* The variables the mesh file's security.tokens read, as a JSON list. */}}
{{- define "meshgate.tokenVariables" -}}
{{- $mesh := include "meshgate.mesh" . | fromJson -}}
{{- $vars := list -}}
{{- $security := get $mesh "security" -}}
{{- if kindIs "map" $security -}}
{{- range $t := (get $security "tokens" | default list) -}}
{{- if kindIs "map" $t -}}
{{- $ref := regexFind "\\$\\{[A-Za-z_][A-Za-z0-9_]*\\}" (toString (get $t "token")) -}}
{{- if $ref -}}{{- $vars = append $vars (trimSuffix "}" (trimPrefix "${" $ref)) -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $vars | toJson -}}
{{- end -}}

{{/* The Secret holding the replication secret; empty when none. */}}
{{- define "meshgate.replicationSecretName" -}}
{{- if .Values.replication.existingSecret -}}
{{- .Values.replication.existingSecret -}}
{{- else if .Values.replication.secret -}}
{{- include "meshgate.suffixed" (list . "replication") -}}
{{- end -}}
{{- end -}}

{{/* The variable the mesh file's security.replication_secret reads; empty when it has none. */}}
{{- define "meshgate.replicationSecretVariable" -}}
{{- $mesh := include "meshgate.mesh" . | fromJson -}}
{{- $security := get $mesh "security" -}}
{{- if kindIs "map" $security -}}
{{- $ref := regexFind "\\$\\{[A-Za-z_][A-Za-z0-9_]*\\}" (toString (get $security "replication_secret")) -}}
{{- if $ref -}}{{- trimSuffix "}" (trimPrefix "${" $ref) -}}{{- end -}}
{{- end -}}
{{- end -}}

{{/* "true" when the mesh file authenticates replication or opts out of it (ca, replication_secret, replication: anonymous), or has one region. */}}
{{- define "meshgate.replicationDecided" -}}
{{- $mesh := include "meshgate.mesh" . | fromJson -}}
{{- $security := get $mesh "security" -}}
{{- if lt (len (get $mesh "regions" | default list)) 2 -}}true
{{- else if and (kindIs "map" $security) (or (get $security "ca") (hasKey $security "replication_secret") (eq (toString (get $security "replication")) "anonymous")) -}}true
{{- end -}}
{{- end -}}

{{/* "true" when the mesh file turns TLS on (security.ca set). */}}
{{- define "meshgate.meshUsesTls" -}}
{{- $mesh := include "meshgate.mesh" . | fromJson -}}
{{- $security := get $mesh "security" -}}
{{- if and (kindIs "map" $security) (get $security "ca") -}}true{{- end -}}
{{- end -}}

{{/* "true" when the region's broker runs inside the pod: the NATS sidecar or kind embedded. */}}
{{- define "meshgate.brokerInPod" -}}
{{- $region := include "meshgate.meshRegion" . | fromJson -}}
{{- if or .Values.nats.enabled (eq (toString (get $region "kind")) "embedded") -}}true{{- end -}}
{{- end -}}

{{/* Refusals that a JSON schema cannot express. */}}
{{- define "meshgate.validate" -}}
{{- if and .Values.nats.enabled (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) -}}
{{- fail "nats.enabled runs one unclustered NATS server per pod, i.e. one log per pod: it needs replicaCount 1 and autoscaling.enabled=false (use an external NATS cluster for several replicas)" -}}
{{- end -}}
{{- if and (include "meshgate.brokerInPod" .) (not .Values.nats.enabled) (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) -}}
{{- fail (printf "region %q is kind: embedded (a nats-server inside each pod, i.e. one log per pod): it needs replicaCount 1 and autoscaling.enabled=false; use kind: nats with an external NATS cluster for several replicas" .Values.region) -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (not (and .Values.tls.cert .Values.tls.key .Values.tls.ca)) -}}
{{- fail "tls.enabled needs tls.existingSecret (a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt) or all of tls.cert, tls.key and tls.ca" -}}
{{- end -}}
{{- $mesh := include "meshgate.mesh" . | fromJson -}}
{{- if $mesh -}}
{{- $text := include "meshgate.meshText" . -}}
{{- if and .Values.tls.enabled (not (include "meshgate.meshUsesTls" .)) -}}
{{- fail "tls.enabled mounts the region's certificate, but the mesh file has no security.ca, so the gateway would serve plaintext: add `security: {ca: ${MESHGATE_TLS_CA_FILE}}` and, to every region, `tls: {cert: ${MESHGATE_TLS_CERT_FILE}, key: ${MESHGATE_TLS_KEY_FILE}}` (see docs/HELM.md), or set tls.enabled=false" -}}
{{- end -}}
{{- if and (not .Values.tls.enabled) (contains "${MESHGATE_TLS_" $text) -}}
{{- fail "the mesh file reads ${MESHGATE_TLS_...} variables, which the chart sets only with tls.enabled=true (and tls.existingSecret or tls.cert/key/ca)" -}}
{{- end -}}
{{- end -}}
{{- if and $mesh (not (include "meshgate.replicationDecided" .)) -}}
{{- fail "the mesh file has several regions and nothing authenticates replication between them, so the gateway would refuse it: add `security: {replication_secret: \"${MESH_REPLICATION_SECRET}\"}` and set replication.existingSecret (or replication.secret) with the same secret in every region's release, or use mTLS (security.ca, tls.enabled), or, on a network you trust only, `security: {replication: anonymous}`" -}}
{{- end -}}
{{- if and .Values.replication.existingSecret .Values.replication.secret -}}
{{- fail "replication: set replication.existingSecret or replication.secret, not both" -}}
{{- end -}}
{{- if and $mesh (include "meshgate.replicationSecretName" .) (not (include "meshgate.replicationSecretVariable" .)) -}}
{{- fail "replication.existingSecret/secret is set, but the mesh file has no security.replication_secret: \"${MESH_REPLICATION_SECRET}\" to read it" -}}
{{- end -}}
{{- if and .Values.auth.enabled (not (include "meshgate.authSecretName" .)) -}}
{{- fail "auth.enabled needs auth.existingSecret (a Secret whose keys are the token variables of the mesh file) or at least one entry in auth.tokens" -}}
{{- end -}}
{{- if and .Values.auth.existingSecret .Values.auth.tokens -}}
{{- fail "auth: set auth.existingSecret or auth.tokens, not both" -}}
{{- end -}}
{{- if .Values.auth.tokens -}}
{{- $missing := list -}}
{{- range $var := (include "meshgate.tokenVariables" . | fromJsonArray) -}}
{{- if not (hasKey $.Values.auth.tokens $var) -}}{{- $missing = append $missing $var -}}{{- end -}}
{{- end -}}
{{- if $missing -}}
{{- fail (printf "the mesh file's security.tokens read %s, which auth.tokens does not set (it sets %s); the gateway would refuse the file" (join ", " $missing) (join ", " (keys .Values.auth.tokens | sortAlpha))) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.replicator.enabled (include "meshgate.brokerInPod" .) -}}
{{- fail "replicator.enabled runs the replication links in pods of their own, which cannot reach a broker inside the gateway pod (the NATS sidecar, or a kind: embedded region): use kind: nats or kind: kafka with brokers outside the pods" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) -}}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" -}}
{{- end -}}
{{- end -}}
