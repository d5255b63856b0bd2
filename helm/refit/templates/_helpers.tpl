{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "refit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources: <release>-refit, or the release name when it already
contains the chart name (so `helm install refit` gives resources named `refit`).
*/}}
{{- define "refit.fullname" -}}
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

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "refit.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every resource carries. */}}
{{- define "refit.labels" -}}
helm.sh/chart: {{ include "refit.chart" . }}
{{ include "refit.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: refit
{{- end }}

{{/* Labels that select the release's pods (the worker pods and the migration pods). */}}
{{- define "refit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "refit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels that select the worker pods only (Service, PodDisruptionBudget, spread). */}}
{{- define "refit.workerSelectorLabels" -}}
{{ include "refit.selectorLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "refit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "refit.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding DATABASE_URL, REDIS_URL, REFIT_KAFKA_PROPERTIES and REFIT_ADMIN_TOKEN. */}}
{{- define "refit.secretName" -}}
{{- default (include "refit.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* Key of the Secret that holds the variable given as the argument's .name. */}}
{{- define "refit.secretKey" -}}
{{- if .root.Values.existingSecret }}
{{- index .root.Values.existingSecretKeys .name }}
{{- else }}
{{- .name }}
{{- end }}
{{- end }}

{{/* The ConfigMap of non-secret settings. */}}
{{- define "refit.configMapName" -}}
{{- printf "%s-config" (include "refit.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The container image. */}}
{{- define "refit.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
One env entry per Secret-held variable. Called with a dict: root (the top context) and names (the
variables wanted). DATABASE_URL and REDIS_URL are required, the others optional.
*/}}
{{- define "refit.secretEnv" -}}
{{- $root := .root }}
{{- range .names }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ include "refit.secretName" $root }}
      key: {{ include "refit.secretKey" (dict "root" $root "name" .) }}
      {{- if not (has . (list "DATABASE_URL" "REDIS_URL")) }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}

{{/* The migration container, shared by the Job and the init container. */}}
{{- define "refit.migrateContainer" -}}
name: migrate
image: {{ include "refit.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
args: ["migrate"]
env:
  {{- include "refit.secretEnv" (dict "root" . "names" (list "DATABASE_URL")) | trim | nindent 2 }}
  - name: REFIT_LOG_FORMAT
    value: {{ .Values.config.logFormat | quote }}
  - name: RUST_LOG
    value: {{ .Values.config.rustLog | quote }}
resources:
  {{- toYaml .Values.migrations.resources | nindent 2 }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
{{- end }}
