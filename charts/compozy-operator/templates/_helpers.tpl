{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "compozy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart> unless the release name already contains the chart name. */}}
{{- define "compozy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of cluster-scoped objects: unique per release namespace and release. */}}
{{- define "compozy.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "compozy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "compozy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "compozy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "compozy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "compozy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "compozy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "compozy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "compozy.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Namespaces watched in namespaced mode (default: the release namespace), as a list. */}}
{{- define "compozy.namespaces" -}}
{{- $ns := .Values.watch.namespaces | default (list .Release.Namespace) }}
{{- toJson (uniq $ns) }}
{{- end }}

{{/* The Secret holding the NATS token (given or generated). */}}
{{- define "compozy.natsSecretName" -}}
{{- default (printf "%s-nats-auth" (include "compozy.fullname" .)) .Values.nats.auth.existingSecret }}
{{- end }}

{{/* Callout mode: the Secret with the NATS server's secrets (made by the operator when absent). */}}
{{- define "compozy.natsCalloutSecretName" -}}
{{- default (printf "%s-nats-callout" (include "compozy.fullname" .) | trunc 63 | trimSuffix "-") .Values.nats.auth.callout.secretName }}
{{- end }}

{{- define "compozy.natsName" -}}
{{- printf "%s-nats" (include "compozy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The NATS URL the operator uses and hands to the task pods. */}}
{{- define "compozy.natsUrl" -}}
{{- if eq .Values.nats.mode "external" }}
{{- .Values.nats.external.url }}
{{- else }}
{{- printf "%s://%s.%s.svc:4222" (ternary "tls" "nats" .Values.nats.tls.enabled) (include "compozy.natsName" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
Least privilege, derived from what the operator calls (see docs/install.md, "RBAC"):
- workflowexecutions get/list/watch: Kopf's watch and the state manager's re-read
- workflowexecutions patch: the compozy.dev/workflow label of a run created without it (metadata only; docs/retry.md)
- workflowexecutions delete: ended runs past their ttlSecondsAfterFinished or their Workflow's historyLimit (docs/cleanup.md)
- workflowexecutions/status patch: the state manager is the only writer of status
- workflows get/list/watch: resolve spec.workflowRef (also in the admission webhook), watch Workflows for their status
- workflows/status patch: the Ready condition of a Workflow (workflow_status.py)
- pods get/list/watch/create/delete: task pods (create, watch, re-check, remove finished ones)
- secrets create: the per-namespace NATS Secret for task pods (an existing one is kept; no read)
- events create/get/patch: Events on executions (kubectl describe wfx), one per run and reason, its count raised
*/}}
{{- define "compozy.namespacedRules" -}}
- apiGroups: [compozy.dev]
  resources: [workflowexecutions]
  verbs: [get, list, watch, patch, delete]
{{- if .Values.api.enabled }}
# api.Service starts runs for callers RBAC allowed (a SubjectAccessReview each); its cancels and
# retries are patches, which the operator may make anyway (the workflow label)
- apiGroups: [compozy.dev]
  resources: [workflowexecutions]
  verbs: [create]
{{- end }}
- apiGroups: [compozy.dev]
  resources: [workflowexecutions/status]
  verbs: [patch]
- apiGroups: [compozy.dev]
  resources: [workflows]
  verbs: [get, list, watch]
- apiGroups: [compozy.dev]
  resources: [workflows/status]
  verbs: [patch]
# RunnerPools (docs/pools.md): their runners are a Deployment each, scaled from the queue
- apiGroups: [compozy.dev]
  resources: [runnerpools]
  verbs: [get, list, watch]
- apiGroups: [compozy.dev]
  resources: [runnerpools/status]
  verbs: [patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [create, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
- apiGroups: [""]
  resources: [events]
  verbs: [create, get, patch]
{{- end }}

{{/* The bundled NATS server's configuration; $POD_NAME, and $NATS_TOKEN or the callout's secrets, come from the environment. */}}
{{- define "compozy.natsConf" -}}
port: 4222
http_port: 8222
server_name: $POD_NAME
{{- if eq .Values.nats.auth.mode "callout" }}
# Callout mode (docs/security.md): the operator, the state manager and the callout service are
# configured users; every other client is put to the callout, which answers with its attempt's user
# JWT. The passwords and the issuer come from the callout Secret through the environment.
{{ .Files.Get "files/nats-callout.conf" }}
{{- else }}
authorization {
  token: $NATS_TOKEN
}
{{- end }}
jetstream {
  store_dir: /data
  max_memory_store: {{ .Values.nats.bundled.maxMemoryStore }}
  max_file_store: {{ .Values.nats.bundled.maxFileStore }}
}
{{- if .Values.nats.tls.enabled }}
tls {
  cert_file: /etc/nats/tls/tls.crt
  key_file: /etc/nats/tls/tls.key
}
{{- end }}
{{- end }}

{{/* The Secret holding the webhook's serving certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "compozy.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "compozy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
