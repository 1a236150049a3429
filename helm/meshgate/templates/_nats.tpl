{{/*
The NATS JetStream sidecar: (list $root $native). It listens on 127.0.0.1 only; the gateway
reaches it at 127.0.0.1:<nats.port> (the region's brokers in the mesh file).
*/}}
{{- define "meshgate.natsContainer" -}}
{{- $root := index . 0 -}}
{{- $native := index . 1 -}}
{{- $v := $root.Values.nats -}}
{{- $health := printf "wget -q -O /dev/null 'http://127.0.0.1:%d/healthz?js-enabled-only=true'" (int $v.monitorPort) -}}
- name: nats
  image: {{ include "meshgate.imageRef" (list $v.image "") | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if $native }}
  restartPolicy: Always
  {{- end }}
  command: ["nats-server"]
  args:
    - "--jetstream"
    - "--store_dir"
    - "/data"
    - "--addr"
    - "127.0.0.1"
    - "--port"
    - {{ $v.port | quote }}
    - "--http_port"
    - {{ $v.monitorPort | quote }}
    - "--server_name"
    - {{ printf "meshgate-%s" $root.Values.region | quote }}
    {{- range $v.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  startupProbe:
    exec:
      command: ["sh", "-c", {{ $health | quote }}]
    periodSeconds: 1
    timeoutSeconds: 2
    failureThreshold: 120
  livenessProbe:
    exec:
      command: ["sh", "-c", {{ $health | quote }}]
    periodSeconds: 10
    timeoutSeconds: 5
    failureThreshold: 6
  {{- if not $native }}
  lifecycle:
    preStop:
      # An ordinary container gets SIGTERM with the gateway: stay up while the gateway drains
      # into this server.
      exec:
        command: ["sleep", {{ add (include "meshgate.drainSeconds" $root | int) ($root.Values.gateway.preStopSleepSeconds | int) 2 | quote }}]
  {{- end }}
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: nats-data
      mountPath: /data
    - name: tmp
      mountPath: /tmp
{{- end -}}
