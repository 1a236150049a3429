{{/*
The OpenTelemetry variables of a meshgate container (traces: observability/README.md). The
service name and resource always (they name the pod in any trace); the exporter only with
tracing.enabled: without an endpoint variable meshgate does no span work at all.
*/}}
{{- define "meshgate.tracingEnv" -}}
{{- $t := .Values.tracing -}}
- name: OTEL_SERVICE_NAME
  value: {{ $t.serviceName | default "meshgate" | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "meshgate.region=%s,k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME)" .Values.region | quote }}
{{- if $t.enabled }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ required "tracing.enabled needs tracing.endpoint: the collector's OTLP address, e.g. http://otel-collector.observability:4317 (grpc) or :4318 (http/protobuf)" $t.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $t.protocol | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $t.sampler | quote }}
{{- if ne (toString $t.samplerArg) "" }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $t.samplerArg | toString | quote }}
{{- end }}
{{- if $t.headersSecret.name }}
# key=value pairs, comma separated (e.g. authorization=Bearer%20<token>): the OTel spec's format.
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ $t.headersSecret.name }}
      key: {{ $t.headersSecret.key }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The collector's port: the endpoint's, else the protocol's default (4317 gRPC, 4318 HTTP). */}}
{{- define "meshgate.tracingPort" -}}
{{- $t := .Values.tracing -}}
{{- $url := urlParse $t.endpoint -}}
{{- $hostPort := splitList ":" (get $url "host") -}}
{{- if gt (len $hostPort) 1 -}}
{{- last $hostPort -}}
{{- else if eq (get $url "scheme") "https" -}}
443
{{- else if eq $t.protocol "grpc" -}}
4317
{{- else -}}
4318
{{- end -}}
{{- end -}}
