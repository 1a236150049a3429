{{/*
The environment of every Meshgate container of the release (gateway and replicator): the region,
the pod's identity for traces, the TLS file paths and the replication secret the mesh file reads,
extraEnv; and the envFrom of the client tokens and extraEnvFrom.
*/}}
{{- define "meshgate.env" -}}
- name: MESHGATE_REGION
  value: {{ .Values.region | quote }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{ include "meshgate.tracingEnv" . }}
{{- if .Values.tls.enabled }}
# Read by the mesh file: security.ca: ${MESHGATE_TLS_CA_FILE}, and the region's
# tls: {cert: ${MESHGATE_TLS_CERT_FILE}, key: ${MESHGATE_TLS_KEY_FILE}}.
- name: MESHGATE_TLS_CERT_FILE
  value: {{ printf "%s/tls.crt" .Values.tls.mountPath | quote }}
- name: MESHGATE_TLS_KEY_FILE
  value: {{ printf "%s/tls.key" .Values.tls.mountPath | quote }}
- name: MESHGATE_TLS_CA_FILE
  value: {{ printf "%s/ca.crt" .Values.tls.mountPath | quote }}
{{- end }}
{{- if include "meshgate.replicationSecretName" . }}
# The secret the regions share, read by the mesh file's security.replication_secret.
- name: {{ include "meshgate.replicationSecretVariable" . | default .Values.replication.secretKey }}
  valueFrom:
    secretKeyRef:
      name: {{ include "meshgate.replicationSecretName" . }}
      key: {{ .Values.replication.secretKey }}
{{- end }}
{{- with .Values.extraEnv }}
{{- toYaml . | nindent 0 }}
{{- end }}
{{- end -}}

{{- define "meshgate.envFrom" -}}
{{- if or .Values.auth.enabled .Values.extraEnvFrom -}}
envFrom:
  {{- if .Values.auth.enabled }}
  # Client tokens: each key is a variable the mesh file's security.tokens reads (${ORDERS_TOKEN}).
  - secretRef:
      name: {{ include "meshgate.authSecretName" . }}
  {{- end }}
  {{- with .Values.extraEnvFrom }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- end -}}
