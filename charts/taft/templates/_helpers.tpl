{{/* The release's base name. */}}
{{- define "taft.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "taft.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Labels that select the serving pods. */}}
{{- define "taft.serveSelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: serve
{{- end -}}

{{/* "true" when the pipeline renders: `pipeline.enabled: true`, or `auto` (the default) on a
     cluster that serves Argo's WorkflowTemplate (a serve-only install needs no Argo). */}}
{{- define "taft.pipeline" -}}
{{- $on := toString .Values.pipeline.enabled -}}
{{- if or (eq $on "true") (and (eq $on "auto") (.Capabilities.APIVersions.Has "argoproj.io/v1alpha1/WorkflowTemplate")) -}}
true
{{- end -}}
{{- end -}}

{{/* The service account of the pipeline's pods. */}}
{{- define "taft.pipelineServiceAccount" -}}
{{- .Values.pipeline.serviceAccount.name | default (printf "%s-workflow" (include "taft.fullname" .)) -}}
{{- end -}}
