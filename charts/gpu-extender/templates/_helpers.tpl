{{/* The extender's and the agent's base name: fullnameOverride, else the release name (with
"-gpu-extender" unless it holds the chart name already). */}}
{{- define "gpu-extender.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 57 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 57 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 57 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "gpu-extender.agent" -}}
{{- include "gpu-extender.fullname" . }}-agent
{{- end -}}

{{- define "gpu-extender.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}

{{/* The GPU-share resource: the policy's sharing.resource, else the extender's default. */}}
{{- define "gpu-extender.shareResource" -}}
{{- dig "sharing" "resource" "gpu-extender.io/gpu-milli" .Values.policy -}}
{{- end -}}

{{- define "gpu-extender.url" -}}
{{- printf "%s://127.0.0.1:%d" (ternary "https" "http" .Values.extender.tls.enabled) (int .Values.extender.port) -}}
{{- end -}}
