{{/*
Expand the name of the chart.
*/}}
{{- define "cachegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
Truncated at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "cachegate.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "cachegate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "cachegate.labels" -}}
helm.sh/chart: {{ include "cachegate.chart" . }}
{{ include "cachegate.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "cachegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cachegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Container image reference.
*/}}
{{- define "cachegate.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Name of the Secret holding the admin token.
*/}}
{{- define "cachegate.adminTokenSecretName" -}}
{{- .Values.adminToken.existingSecret | default (printf "%s-admin" (include "cachegate.fullname" .)) }}
{{- end }}

{{/*
routes.yaml as mounted in the pod: the user's config with the listen addresses
forced to the container ports.
*/}}
{{- define "cachegate.config" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- $admin := get $config "admin" | default dict }}
{{- if hasKey $admin "token" }}
{{- fail "config.admin.token would be stored in a ConfigMap: use adminToken.value or adminToken.existingSecret instead" }}
{{- end }}
{{- $_ := set $config "listen" (printf "0.0.0.0:%v" .Values.containerPorts.http) }}
{{- $_ = set $admin "listen" (printf "0.0.0.0:%v" .Values.containerPorts.admin) }}
{{- $_ = set $config "admin" $admin }}
{{- toYaml $config }}
{{- end }}
